"""`smallmind doctor`: what the kernels run on — CPU, features, kernel path, BLAS, threads, and
whether GGUF weights get huge pages."""

import json


def add_parser(sub):
    p = sub.add_parser("doctor", help="show the CPU, its features, the kernel path, BLAS and threads")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(run=run)


def run(args):
    from .. import kernels
    from ..memory import huge_pages_for_large_arrays, transparent_huge_pages

    info = dict(kernels.get_info())
    info["transparent_huge_pages"] = transparent_huge_pages()
    info["gguf_weights_on_huge_pages"] = huge_pages_for_large_arrays()
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    print(format_info(info))
    return 0


def format_info(info: dict) -> str:
    """The get_info() dict as aligned `label: value` lines."""
    have = [name for name, ok in info["cpu_features"].items() if ok]
    missing = [name for name, ok in info["cpu_features"].items() if not ok]
    if info["native_available"]:
        path = f"{info['kernel_path']} (compiled by {info['compiler']})"
    else:
        path = "numpy (the native kernels are not built or are turned off by SMALLMIND_KERNELS)"
    rows = [
        ("cpu", f"{info['cpu']} ({info['machine']})"),
        ("cpu features", " ".join(have) or "none detected"),
        ("not present", " ".join(missing) or "-"),
        ("kernel path", path),
        ("quantized", f"{info['quant_kernels']} (the GGUF weight products)"),
        ("gemm", f"{info['gemm_kernels']} (training's and prefill's float products)"),
        ("threads", f"{info['threads']} (native kernels and BLAS share this budget)"),
    ]
    if "transparent_huge_pages" in info:
        mode = info["transparent_huge_pages"] or "no setting (not Linux)"
        rows.append(("huge pages", f"{mode}: GGUF weights " + (
            "are read into memory on 2 MiB pages" if info["gguf_weights_on_huge_pages"]
            else "stay mapped from the file")))
    for blas in info["blas"] or [{"name": "none found", "version": None, "threads": None}]:
        rows.append(("blas", f"{blas['name']} {blas['version'] or ''}".strip()
                     + (f", {blas['threads']} threads" if blas.get("threads") else "")))
    rows += [("numpy", info["numpy"]), ("python", info["python"])]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)} : {value}" for label, value in rows)
