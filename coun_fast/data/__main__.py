import sys

from coun_fast.data.preview import build_parser, run

sys.exit(run(build_parser().parse_args()))
