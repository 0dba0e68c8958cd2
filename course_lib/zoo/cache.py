"""The cache folder and checksums now live in :mod:`course_lib.cache` (the bottom layer, so that methods
can use it without importing zoo); this module keeps ``course_lib.zoo.cache`` importable."""
from ..cache import (  # noqa: F401
    MANIFEST,
    ChecksumError,
    file_problem,
    folder_problem,
    home,
    pip_download_wheel,
    sha256,
    user_cache,
    verify,
    writable,
    write_checksum,
    write_manifest,
)
