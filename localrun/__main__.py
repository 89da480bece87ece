"""`python -m localrun` is the `localrun` command (and the entry point of the frozen binary)."""

from localrun.selfexec import main

if __name__ == "__main__":
    main()
