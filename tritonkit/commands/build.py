"""`tritonkit build`, `tritonkit models`, `tritonkit gpus` (click only; the work is in the library)."""

from __future__ import annotations

import json
import sys

import click



def _console():
    from rich.console import Console

    # Piped output keeps whole rows instead of wrapping at 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


@click.command("build")
@click.argument("model")
@click.option("--gpu", required=True, metavar="PROFILE", help="GPU profile (see `tritonkit gpus`), or cpu.")
@click.option("--gpus", "gpus_count", type=int, help="GPUs on the instance [default: the profile's].")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=PATH",
              help="PEFT LoRA adapter folder; repeatable. PATH alone names it after the folder.")
@click.option("--lora-mode", metavar="merge|serve",
              help="merge: one adapter merged into the weights; serve: the base plus adapters chosen per request "
                   "[default: merge for one adapter, serve for several].")
@click.option("--max-lora-rank", type=int, help="Refuse adapters above this rank; vLLM's max_lora_rank.")
@click.option("--name", help="Triton model name [default: the model's name].")
@click.option("-o", "--repository", default="model_repository", show_default=True,
              help="Model repository folder (`serve` and `perf` look there by default).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the fit plan and write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing model directory.")
@click.option("--dtype", metavar="bfloat16|float16|float32", help="Override the planner's dtype.")
@click.option("--tp", type=int, help="Override tensor_parallel_size.")
@click.option("--max-model-len", type=int, help="Override max_model_len.")
@click.option("--max-num-seqs", type=int, help="Override max_num_seqs.")
@click.option("--gpu-memory-utilization", type=float, help="Override vLLM's share of GPU memory.")
@click.option("--quantization", metavar="awq|gptq|fp8", help="Serve a quantised variant (the catalog's pre-quantised checkpoint, or fp8 on the fly).")
@click.option("--price", type=float, help="Override the profile's price in USD per hour.")
@click.option("--random-weights", is_flag=True,
              help="Serve the model's exact architecture with RANDOM weights (no download; for capacity "
                   "and cost only), built once in $TRITONKIT_HOME/models/<name>-random.")
def build(model, gpu, gpus_count, adapters, lora_mode, max_lora_rank, name, repository, plan_only,
          force, dtype, tp, max_model_len, max_num_seqs, gpu_memory_utilization, quantization, price,
          random_weights):
    """Plan and write a Triton (vLLM backend) model for MODEL: a catalog name, HF id or folder."""
    from tritonkit import plan_rows, planner, repository as repo

    choices = planner.Choices(dtype=dtype, tp=tp, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                              gpu_memory_utilization=gpu_memory_utilization, quantization=quantization)
    spec = repo.prepare(model, gpu, gpus_count=gpus_count, adapters=adapters, lora_mode=lora_mode,
                        name=name, repository=repository, choices=choices,
                        max_lora_rank=max_lora_rank, price=price, force=force, random_weights=random_weights)
    console = _console()
    title = f"{spec.model.name} on {spec.gpu.describe()}"
    if random_weights:
        title += " -- RANDOM WEIGHTS"
    if spec.lora_mode != "none":
        title += f" -- LoRA {spec.lora_mode}: {', '.join(a.name for a in spec.adapters)}"
    console.print(_table(title, ["quantity", "value", "how"],
                         [list(r) for r in plan_rows.rows(spec.plan, spec.model.architecture)]))
    if plan_only:
        click.echo("--plan: nothing written", err=True)
        return
    if random_weights:
        from tritonkit.randomweights import WARNING

        click.echo(WARNING, err=True)
    target = repo.write(spec, say=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {target}")
    if spec.model.random_weights:
        click.echo(f"weights: RANDOM ({spec.model.source}); build.json records model.random_weights: true")
    click.echo(f"model.json: {json.dumps(spec.engine_args())}")
    for key, value in spec.runtime_env().items():
        click.echo(f"runtime env: {key}={value}")


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON on stdout.")
def models(as_json):
    """List the model catalog (shipped + $TRITONKIT_HOME/models.json)."""
    from tritonkit import catalog

    entries = catalog.load_catalog()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    rows = []
    for name, entry in entries.items():
        a = entry["architecture"]
        rows.append([name, entry.get("hf_id") or "(built in)", f"{a['num_parameters'] / 1e9:.2f}B",
                     str(a["num_hidden_layers"]), f"{a['num_attention_heads']}/{a['num_key_value_heads']}",
                     f"{a['max_position_embeddings']:,}", entry["origin"]])
    _console().print(_table("models", ["name", "hf_id", "params", "layers", "heads/kv", "context", "from"], rows))


@click.command("gpus")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON on stdout.")
def gpus_command(as_json):
    """List the GPU profiles (shipped + $TRITONKIT_HOME/gpus.json)."""
    import dataclasses

    from tritonkit import gpus

    profiles = gpus.load_profiles()
    if as_json:
        click.echo(json.dumps({name: dataclasses.asdict(p) for name, p in profiles.items()}, indent=2))
        return
    rows = []
    for p in profiles.values():
        rows.append([p.name, p.gpu, f"{p.memory_mib / 1024:.1f}", str(p.bandwidth_gbps or "-"),
                     "yes" if p.bf16 else "no", "yes" if p.fp8 else "no", str(p.gpus), p.instance,
                     f"{p.price_per_hour:g}"])
    _console().print(_table("GPU profiles (memory per GPU; cpu: this machine's RAM)",
                            ["name", "gpu", "GiB", "GB/s", "bf16", "fp8", "gpus", "instance", "$/h"], rows))


COMMANDS: list = [build, models, gpus_command]
