"""``python -m inboxstream``: the same command line as the ``inboxstream`` script."""

from inboxstream.app.cli import main

if __name__ == "__main__":
    main()
