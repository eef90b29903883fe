from vmtrace.cli import catch_early_interrupts

catch_early_interrupts()

from vmtrace.cli.main import main  # noqa: E402  (after the handler: the imports take time)

main()
