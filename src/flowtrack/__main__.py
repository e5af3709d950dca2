from flowtrack.cli import main

main()
