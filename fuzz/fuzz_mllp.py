"""atheris harness for the mllp target (see fuzz/targets.py and fuzz/README.md).

    python fuzz/fuzz_mllp.py fuzz/work/mllp fuzz/corpus/mllp -max_total_time=600
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["ecg_gateway"]):  # imported only to be instrumented
    import ecg_gateway.mllp
    from fuzz.targets import mllp as TestOneInput

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
