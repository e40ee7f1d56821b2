"""`python -m genlab.bench`: the command of `genlab.tools.bench` (developer tools live in `genlab.tools`)."""

from .tools.bench import main

if __name__ == "__main__":
    main()
