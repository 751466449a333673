from flopsweep.cli.project import entry

entry()
