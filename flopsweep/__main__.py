from flopsweep.cli import main

main()
