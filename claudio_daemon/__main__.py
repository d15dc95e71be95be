"""`python -m claudio_daemon` is `claudio-daemon`."""

from claudio_daemon.cli import main

main()
