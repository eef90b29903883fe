from vmtrace.cli.main import main

main()
