"""`python -m genlab.data`: the command of `genlab.tools.data` (developer tools live in `genlab.tools`)."""

from .tools.data import main

if __name__ == "__main__":
    main()
