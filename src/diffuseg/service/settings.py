"""Settings of the HTTP service, one field per ``diffuseg serve`` option."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffuseg.errors import ConfigError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServiceSettings:
    run_dir: Path  # run folder of 'diffuseg train': the model, loaded once
    data_dir: Path = Path("diffuseg_data")  # tokens.json and jobs/{id}/ live here
    host: str = "127.0.0.1"  # listen address; --no-auth is only allowed on a local one
    port: int = 8000
    auth: bool = True  # bearer-token authentication (tokens.json)
    max_upload_bytes: int = 512 * 2**20  # a larger request body is refused with 413
    max_unpacked_bytes: int = 2 * 2**30  # total uncompressed size of a zip upload
    max_zip_ratio: float = 200.0  # uncompressed / compressed size of one zip member
    max_files: int = 5000  # members of a zip / instances of a fetched series
    max_voxels: int = 512 * 2**20  # Rows * Columns * frames * slices of one input
    concurrency: int = 1  # jobs segmented at once (torch runs in worker threads)
    max_queue: int = 1000  # queued jobs beyond which submissions get 503
    pacs_url: str | None = None  # DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    pacs_timeout: float = 120.0  # seconds per DICOMweb request
    n_samples: int | None = None  # None: the run's sample.n_samples
    steps: int | None = None  # None: the run's sample.steps
    seed: int = 0
    device: str = "auto"
    dicom_samples: bool = False  # also write seg_samples.dcm for DICOM inputs
    rtstruct: bool = False  # also write rtstruct_consensus.dcm (RT Structure Set) for DICOM inputs

    def validate(self) -> ServiceSettings:
        if not self.auth and self.host not in LOCAL_HOSTS:
            raise ConfigError(f"--no-auth is only allowed with a local --host "
                              f"({', '.join(LOCAL_HOSTS)}), not '{self.host}'; keep token "
                              "authentication on")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency {self.concurrency} must be at least 1")
        if self.max_upload_bytes < 1:
            raise ConfigError(f"--max-upload-mb must be positive, got {self.max_upload_bytes}")
        if self.pacs_url is not None and not self.pacs_url.startswith(("http://", "https://")):
            raise ConfigError(f"--pacs '{self.pacs_url}' must be an http(s) DICOMweb root, e.g. "
                              "http://127.0.0.1:8042/dicom-web")
        self.run_dir, self.data_dir = Path(self.run_dir), Path(self.data_dir)
        return self
