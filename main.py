"""The Dataflow Flex Template's main file: `python main.py --input=... --output=...` is `imgsim run`.

The template launcher runs this file with the template parameters as
`--name=value` flags (underscore spellings are declared aliases of imgsim's
flags). Everything else is imgsim's own command line.
"""
import sys

from imgsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
