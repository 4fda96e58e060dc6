"""``diffuseg serve RUN``: the HTTP service (docs/deploying.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffuseg.cli.app import command, warn
from diffuseg.errors import DiffusegError


@command("serve")
def serve_command(
    run: Annotated[Path, typer.Argument(
        help="Run folder written by 'diffuseg train', or a model name ('diffuseg models')")],
    host: Annotated[str, typer.Option(help="Listen address (keep 127.0.0.1 behind a proxy)")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port")] = 8000,
    data: Annotated[Path, typer.Option("--data", help="Folder for tokens.json and jobs/")
                    ] = Path("diffuseg_data"),
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No token check (local host only)")
                       ] = False,
    pacs: Annotated[str | None, typer.Option(
        "--pacs", help="DICOMweb root of the PACS, e.g. http://127.0.0.1:8042/dicom-web",
        show_default="no PACS")] = None,
    concurrency: Annotated[int, typer.Option(help="Jobs segmented at once")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (MiB)")] = 512.0,
    samples: Annotated[int | None, typer.Option("--samples", "-n", help="Masks per job",
                                                         show_default="the run's")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampler steps",
                                                        show_default="the run's")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of every job")] = 0,
    device: Annotated[str, typer.Option("-device", "--device", help="auto, cpu or cuda")
                      ] = "auto",
    dicom_samples: Annotated[bool, typer.Option(
        "--dicom-samples", help="Also write every sample as a segment of seg_samples.dcm")
    ] = False,
    rtstruct: Annotated[bool, typer.Option(
        "--rtstruct", help="Also write the consensus as an RT Structure Set "
        "(rtstruct_consensus.dcm) for DICOM series jobs, stored to the PACS with the SEGs")
    ] = False,
) -> None:
    """Serve the model over HTTP: upload jobs, PACS (DICOMweb) jobs, results, OpenAPI at /docs."""
    try:
        import uvicorn

        from diffuseg.service.app import create_app
    except ImportError as err:
        raise DiffusegError(f"diffuseg serve needs the service extra ({err}); run "
                            "pip install 'diffuseg[service]'") from None
    from diffuseg.pretrained.lookup import resolve
    from diffuseg.service.settings import ServiceSettings

    settings = ServiceSettings(
        run_dir=resolve(run), data_dir=data, host=host, port=port, auth=not no_auth,
        max_upload_bytes=int(max_upload_mb * 2**20), concurrency=concurrency, pacs_url=pacs,
        n_samples=samples, steps=steps, seed=seed, device=device, dicom_samples=dicom_samples,
        rtstruct=rtstruct,
    ).validate()
    app = create_app(settings)
    from diffuseg.run.verdict import not_learned_warning

    message = not_learned_warning(run)
    if message:
        warn(message)
    root = service_root(host, port)
    typer.echo(f"diffuseg serve: {root}/docs (data in {data})")
    token = "" if no_auth else f"?token=YOUR_TOKEN (from {data / 'tokens.json'})"
    typer.echo(f"review page: {root}/review{token}")
    uvicorn.run(app, host=host, port=port, log_level="info")


def service_root(host: str, port: int) -> str:
    """The URL a browser on this machine opens: a wildcard listen address (0.0.0.0, ::) is
    reached at 127.0.0.1; an IPv6 address goes in brackets (RFC 3986)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
