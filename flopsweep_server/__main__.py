from flopsweep_server.commands import entry

entry()
