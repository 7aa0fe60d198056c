"""`python -m bloodwork.cli ...`, as the campaign's steps and the tests call it."""

from bloodwork.cli import main

if __name__ == "__main__":
    main()
