"""Submit a job to a Ray head, as `ray job submit --working-dir . -- ENTRYPOINT` does, with the
cluster's token (RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN, or the file `make token` wrote), and one
line on stderr when the head is down or refuses the token. Waits for the job and streams its
logs; the exit code is 0 when the job succeeded.

    python jobs/submit.py [--address http://127.0.0.1:8265] [--no-wait] -- python jobs/train.py ...
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cluster.token import use_token  # noqa: E402

use_token()  # before Ray is imported: Ray reads its authentication mode once, at import

from pipeline.cluster.submit import SubmitError, submit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
                   help="the head's dashboard / job API (default RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--working-dir", default=".", help="uploaded for the job (default: this folder)")
    p.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the job's command line")
    args = p.parse_args(argv)
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entrypoint:
        p.error("give the job's command after --, e.g. -- python jobs/train.py ...")
    try:
        job_id, status, message = submit(args.address, entrypoint, args.working_dir, wait=not args.no_wait)
    except SubmitError as e:
        sys.exit(f"submit: {e}")
    ended = args.no_wait or status == "SUCCEEDED"
    print(f"job {job_id}: {status}" + (f": {message}" if message and not ended else ""), file=sys.stderr)
    return 0 if ended else 1


if __name__ == "__main__":
    sys.exit(main())
