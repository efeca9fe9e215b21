from memosys.interface.cli import main

main()
