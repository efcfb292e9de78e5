"""`tritonkit image`: build the serving image (NGC Triton + vLLM, or the CPU image) with Docker or podman."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from tritonkit.runtime import engine as engines
from tritonkit.runtime import image as images


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.option("--tag", "-t", default=None,
              help=f"Image tag [default: {images.DEFAULT_IMAGE} or $TRITONKIT_IMAGE; with --cpu {images.CPU_IMAGE}].")
@click.option("--base-image", default=None,
              help=f"NGC base image [default: {images.BASE_IMAGE}, or $TRITONKIT_BASE_IMAGE].")
@click.option("--repository", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Bake this model repository into the image (at its absolute path) instead of mounting it.")
@click.option("--cpu", is_flag=True,
              help="Build the CPU image (no NGC image, no GPU): Triton 2.51 from the nvidia-pytriton wheel, "
                   f"vLLM CPU and tritonkit's vllm backend on the local Debian base ({images.LOCAL_BASE}). "
                   "Skipped when an image of the same content is already built.")
@click.option("--rebuild", is_flag=True, help="With --cpu: build even when the cached image is current.")
@click.option("--dry-run", is_flag=True, help="Print the build command instead of running it.")
def image(tag: str | None, base_image: str | None, repository: Path | None, cpu: bool, rebuild: bool,
          dry_run: bool) -> None:
    """Build the image that `tritonkit serve --runtime docker` runs."""
    if cpu:
        if repository is not None or base_image is not None:
            raise click.UsageError("--cpu takes neither --repository nor --base-image")
        if dry_run:
            plan = images.plan_cpu_image(engines.detect(), tag or images.CPU_IMAGE)
            click.echo(shlex.join(plan.deps_args(Path("<context: Dockerfile.deps, wheels/, triton/>"))))
            click.echo(shlex.join(plan.image_args(Path("<context: Dockerfile, tritonkit/>"))))
            return
        result = images.build_cpu_image(tag or images.CPU_IMAGE, _say, rebuild)
        verb = "built" if result.built else "up to date:"
        click.echo(f"{verb} {result.tag} ({result.seconds:.0f} s"
                   + (", Python/vLLM/Triton layers included" if result.deps_built else "") + ")", err=True)
        return
    tag = tag or images.default_image()
    if dry_run:
        argv = images.build_image_args(images.dockerfiles_dir(), tag, base_image or images.base_image(), repository)
        click.echo(shlex.join(argv))
        return
    engine = engines.detect()
    argv = images.build_image_args(images.dockerfiles_dir(), tag, base_image or images.base_image(), repository,
                                   client=engine.client)
    images.run_build(argv, _say, f"{engine.client} build of {tag}")
    click.echo(f"built {tag}", err=True)


COMMANDS = [image]
