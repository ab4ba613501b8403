"""``sslpipe``: the command line.

    sslpipe pretrain [--config NAME_OR_PATH] [--set section.key=value ...]
    sslpipe pretrain --resume [RUN]                         # continue a run from its last checkpoint
    sslpipe tune [--config tune] [--set tune.num_samples=N ...]   # search mask ratio / temperature
    sslpipe tune --resume [SEARCH]                          # continue an interrupted search
    sslpipe promote NAME VERSION                            # move the @champion alias by hand
    sslpipe data stats|preview [--config ...] [--set ...]  # the data stage alone
    sslpipe config [--config NAME_OR_PATH] [--set ...]     # print the resolved config
    sslpipe evaluate MODEL [--tasks mlm,stsb,...] [--corpus PATH] [--data-root DIR] [--json]
                    # MODEL: a directory, runs:/RUN_ID/PATH, models:/NAME/VERSION, models:/NAME@ALIAS

Usage and input errors print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pipelines import configs
from ssl_core.config import config_reference
from ssl_core.errors import UserError


def _shipped() -> str:
    return ", ".join(configs.names())


def _parser() -> argparse.ArgumentParser:
    ref = "\n".join(f"  {k:<28} {t:<6} default {v!r}" for k, t, v in config_reference())
    p = argparse.ArgumentParser(
        prog="sslpipe", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-supervised pretraining of Transformer encoders on Ray.",
        epilog=f"config keys (set with --set section.key=value):\n{ref}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    def common(sp):
        sp.add_argument("--config", default="default", metavar="NAME_OR_PATH",
                        help=f"shipped config name ({_shipped()}) or a YAML file (default: default)")
        sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        dest="overrides", help="override one config key (repeatable)")

    pre = sub.add_parser("pretrain", help="pretrain an encoder (MLM, NSP, contrastive), evaluate it, register it in MLflow",
                         description="Corpus -> Ray Data (tokenize, pack, mask) -> Ray Train (DDP) -> "
                                     "MLflow Model Registry. Uses RAY_ADDRESS and MLFLOW_TRACKING_URI "
                                     "when set; a local Ray and ./mlflow.db otherwise.")
    common(pre)
    pre.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN",
                     help="continue a run whose driver died, from its last checkpoint: a run name "
                          "under output_dir or a run directory (default: the newest run); the "
                          "run's saved config is used")
    tn = sub.add_parser("tune", help="search the mask ratio and temperature with Ray Tune (Optuna TPE + ASHA)",
                        description="Ray Tune search over masking.ratio / contrastive.temperature (see "
                                    "the tune.* keys): trials compared on held-out MLM accuracy at the "
                                    "fixed 15%% mask, STS-B dev Spearman or a weighted sum; MLflow parent "
                                    "run with a nested run per trial; the best model registered.")
    tn.add_argument("--config", default="tune", metavar="NAME_OR_PATH",
                    help="shipped config name or a YAML file (default: tune)")
    tn.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                    help="override one config key (repeatable)")
    tn.add_argument("--resume", nargs="?", const="latest", default=None, metavar="SEARCH",
                    help="continue an interrupted search (default: the newest under output_dir); "
                         "finished trials are not trained again")
    pr = sub.add_parser("promote", help="move the @champion alias of a registered model to a version",
                        description="Set @champion on NAME VERSION by hand (MLFLOW_TRACKING_URI, else ./mlflow.db).")
    pr.add_argument("name", metavar="NAME")
    pr.add_argument("version", metavar="VERSION")
    cfg = sub.add_parser("config", help="print the resolved config as JSON")
    common(cfg)
    data = sub.add_parser("data", help="inspect the Ray Data stage without training",
                          description="Run the data stage (read, clean, split, tokenize, build "
                                      "examples) on a local Ray or RAY_ADDRESS.")
    dsub = data.add_subparsers(dest="data_cmd", metavar="ACTION")
    dsub.required = True
    st = dsub.add_parser("stats", help="one pass over the corpus; print the data report "
                                       "(records read = used + skipped, per-objective examples)")
    common(st)
    pv = dsub.add_parser("preview", help="print a few decoded examples of each enabled objective")
    common(pv)
    pv.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    ev = sub.add_parser("evaluate", help="run the evaluation suite on a model directory or MLflow model",
                        description="MLM/NSP on held-out text, STS-B/SICK Spearman, SST-2/TREC linear "
                                    "probes, fill-mask examples. MODEL: a local directory, "
                                    "runs:/RUN_ID/PATH, models:/NAME/VERSION or models:/NAME@ALIAS "
                                    "(MLFLOW_TRACKING_URI, else ./mlflow.db). Labelled data from "
                                    "--data-root, SSLPIPE_DATA_ROOT or ../shared/data.")
    ev.add_argument("model", metavar="MODEL")
    ev.add_argument("--tasks", default=None, metavar="T1,T2",
                    help="comma-separated: mlm,nsp,stsb,sick,sst2,trec,fillmask (default: all)")
    ev.add_argument("--corpus", default=None, metavar="PATH",
                    help="held-out text for mlm/nsp (default: the corpus of the model's training config)")
    ev.add_argument("--data-root", default=None, metavar="DIR",
                    help="folder with stsb/, sick/, sst2/, trec/ (default: SSLPIPE_DATA_ROOT or ../shared/data)")
    ev.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return p


def _stop_ray() -> None:
    """Shuts down the Ray this CLI connected to or started; a process of a local Ray that has not
    exited 10 s after ``ray.shutdown()`` (Ray 2.60 workers can hang in their exit handlers) is
    killed and named on stderr, so that nothing of the run stays behind holding memory."""
    import ray
    if ray.is_initialized():
        from pipelines.reap import descendants, reap
        local = descendants() if not os.environ.get("RAY_ADDRESS") else {}
        ray.shutdown()
        left = reap(local, grace=10.0)
        if left:
            print(f"sslpipe: {len(left)} process(es) of the local Ray had not exited 10 s after it was shut "
                  f"down (a Ray worker hung in its exit handlers); killed PIDs {left}", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()


def _run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cmd == "evaluate":                      # needs no --config
        from pipelines.evaluate import run_evaluate
        print(run_evaluate(args.model, args.tasks, args.corpus, args.data_root, args.json), flush=True)
        return 0
    if args.cmd == "promote":
        import mlflow

        from pipelines import registry
        uri = registry.tracking_uri()
        registry.check_tracking(uri)
        mlflow.set_tracking_uri(uri)
        print(registry.promote(args.name, args.version), flush=True)
        return 0
    cfg = configs.load_config(args.config, args.overrides)
    if args.cmd == "config":
        print(json.dumps(cfg.to_dict(), indent=2))
    elif args.cmd == "data":
        from pipelines.datacmd import run_preview, run_stats
        print(run_stats(cfg) if args.data_cmd == "stats" else run_preview(cfg, args.n), flush=True)
    elif args.cmd == "tune":
        from transformers.utils import logging as hf_logging

        from pipelines.tune import run_tune
        hf_logging.disable_progress_bar()
        res = run_tune(cfg, resume=args.resume)
        _stop_ray()
        print(res.best_yaml or "no best config (no trial finished)")
        print(res.model_uri or "nothing registered")
    elif args.cmd == "pretrain":
        from transformers.utils import logging as hf_logging

        from pipelines.pretrain import run_pretrain
        hf_logging.disable_progress_bar()           # "Loading weights" bars in a log file
        res = run_pretrain(cfg, resume=args.resume)
        _stop_ray()     # flush Ray's forwarded worker logs first: these two lines end the output
        print(res.model_uri)
        print(res.model_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ours = not _ray_running()                   # a Ray this call starts is this call's to stop
    try:
        return _run(args)
    except UserError as e:           # every input the user can fix: one line, exit 2
        print(f"sslpipe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sslpipe: interrupted", file=sys.stderr)
        return 130
    finally:
        if ours and _ray_running():             # `data`, and runs that stopped on an error
            _stop_ray()


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


if __name__ == "__main__":
    sys.exit(main())
