from loopstream.cli import main

main()
