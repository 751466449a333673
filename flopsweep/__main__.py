from flopsweep.cli.flopsweep import entry

entry()
