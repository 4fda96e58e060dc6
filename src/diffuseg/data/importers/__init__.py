"""Importers: real data sets in the layouts users download, written as diffuseg dataset folders
(docs/importers.md). Each streams its cases into ``write_dataset`` one at a time."""

from diffuseg.data.importers.common import ImportSummary
from diffuseg.data.importers.dicom import import_dicom
from diffuseg.data.importers.folder import import_folder
from diffuseg.data.importers.lidc import import_lidc_slices
from diffuseg.data.importers.msd import import_msd

__all__ = ["ImportSummary", "import_dicom", "import_folder", "import_lidc_slices", "import_msd"]
