"""`python -m imgsim`: the imgsim command."""
from imgsim.cli import console

console()
