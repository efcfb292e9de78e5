"""`tritonkit image`: build the serving image (NGC Triton + vLLM) with Docker."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from tritonkit.runtime import docker


@click.command()
@click.option("--tag", "-t", default=None, help=f"Image tag [default: {docker.DEFAULT_IMAGE}, or $TRITONKIT_IMAGE].")
@click.option("--base-image", default=None,
              help=f"NGC base image [default: {docker.BASE_IMAGE}, or $TRITONKIT_BASE_IMAGE].")
@click.option("--repository", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Bake this model repository into the image (at its absolute path) instead of mounting it.")
@click.option("--dry-run", is_flag=True, help="Print the docker build command instead of running it.")
def image(tag: str | None, base_image: str | None, repository: Path | None, dry_run: bool) -> None:
    """Build the Docker image that `tritonkit serve --runtime docker` runs."""
    argv = docker.build_image_args(docker.dockerfiles_dir(), tag or docker.default_image(),
                                   base_image or docker.base_image(), repository)
    if dry_run:
        click.echo(shlex.join(argv))
        return
    docker.build_image(argv)
    click.echo(f"built {argv[argv.index('-t') + 1]}", err=True)


COMMANDS = [image]
