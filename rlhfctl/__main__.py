from rlhfctl.cli import main

main()
