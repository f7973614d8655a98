"""Entrypoint for `ray job submit`: run a sweep on the cluster the job runs in.

    ray job submit --working-dir . --runtime-env-json \
        '{"env_vars": {"RADDIST_SALT_FILE": "s3://bucket/private/raddist-salt"}}' -- \
        python jobs/sweep.py paper --output s3://bucket/run

CONFIG is a config file (a path or URI) or the name of one shipped with raddist (demo, paper, smoke).

Rerunning the same command after a crash, `ray job stop`, a lost node or a new head (`ray down` /
`ray up`, the RayJob applied again) runs only the cells that are not finished; the embedding cache
and the finished cells are reused. That needs the salt where every head finds it: RADDIST_SALT_FILE
(object storage); on a cluster whose work runs on other nodes, a run without it is refused before
any work.
With --synthetic DIR, the synthetic dataset is written to DIR first (if absent) and the config's
${RADDIST_DEMO_DATA} points at it: that is how the smoke sweep runs anywhere.
"""

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a config file, or a shipped config's name: demo, paper, smoke")
    p.add_argument("--output", required=True, help="output URI: a local path or s3://bucket/prefix")
    p.add_argument("--cache", default=None, help="embedding cache URI (default: the spec's, $RADDIST_CACHE, ~/.cache/raddist)")
    p.add_argument("--synthetic", default=None, metavar="DIR", help="write the synthetic dataset here first")
    args = p.parse_args(argv)

    from raddist import storage
    from raddist.errors import RaddistError
    from raddist.privacy import require_durable_salt
    from raddist.config import load
    from raddist.sweep import ensure_ray, run_sweep

    try:
        ensure_ray()  # the cluster this job runs in
        require_durable_salt()  # before any work: a salt that dies with the head cannot resume
        if args.synthetic:
            from raddist.data.synthetic import write_brain_mri, write_synthetic

            data = storage.normalize(args.synthetic)
            if not storage.exists(storage.join(data, "chest", "manifest.parquet")):
                write_synthetic(data)
            if not storage.exists(storage.join(data, "brain_mri_site_b", "manifest.parquet")):  # the demo's external set
                write_brain_mri(storage.join(data, "brain_mri_site_b"), n_patients=16, site_b=True)
            os.environ["RADDIST_DEMO_DATA"] = data
        overrides = {k: v for k, v in (("storage.cache", args.cache), ("storage.output", args.output)) if v}
        summary = run_sweep(load(args.config, overrides))
    except RaddistError as e:
        print(f"raddist: error: {e}", file=sys.stderr)
        return 2
    if summary.get("state") == "interrupted":
        return summary["exit_code"]  # stopped by `ray job stop` (SIGTERM): said in one line; resumable
    print(json.dumps(summary, indent=2))
    return 0 if summary["cells_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
