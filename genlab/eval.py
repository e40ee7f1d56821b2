"""`python -m genlab.eval`: the command of `genlab.tools.eval` (developer tools live in `genlab.tools`)."""

from .tools.eval import main

if __name__ == "__main__":
    main()
