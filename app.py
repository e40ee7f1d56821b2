"""GenLab app: `python app.py --help`. Assembles the tabs (genlab.ui) and launches; nothing more."""

from genlab.config import parse_args
from genlab.ui import launch

if __name__ == "__main__":
    launch(parse_args())
