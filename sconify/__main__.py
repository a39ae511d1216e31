"""python -m sconify ... is the sconify command."""

from sconify.cli.main import main

if __name__ == "__main__":
    main()
