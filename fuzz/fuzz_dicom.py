"""atheris harness for the dicom target (see fuzz/targets.py and fuzz/README.md).

    python fuzz/fuzz_dicom.py fuzz/work/dicom fuzz/corpus/dicom -max_total_time=600
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["ecg_gateway", "pydicom"]):  # imported only to be instrumented
    import pydicom

    import ecg_gateway.inbound.dicom
    from fuzz.targets import dicom as TestOneInput

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
