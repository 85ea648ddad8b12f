"""atheris harness for the hl7 target (see fuzz/targets.py and fuzz/README.md).

    python fuzz/fuzz_hl7.py fuzz/work/hl7 fuzz/corpus/hl7 -max_total_time=600
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["ecg_gateway"]):  # imported only to be instrumented
    import ecg_gateway.inbound.aecg
    import ecg_gateway.inbound.dicom
    import ecg_gateway.inbound.hl7
    import ecg_gateway.inbound.hl7_tokens
    import ecg_gateway.inbound.muse
    from fuzz.targets import hl7 as TestOneInput

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
