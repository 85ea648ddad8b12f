"""Prometheus metrics. Labels carry codes and states only, never patient identifiers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

ECGS_RECEIVED = Counter("ecg_gateway_ecgs_received", "Inbound ECG messages by source and outcome",
                        ["source", "outcome"], registry=REGISTRY)
DICOM_STATUSES = Counter("ecg_gateway_dicom_statuses", "C-STORE statuses sent", ["status"], registry=REGISTRY)
HL7_ACKS = Counter("ecg_gateway_hl7_acks", "HL7 acknowledgement codes sent", ["code"], registry=REGISTRY)
INFERENCE_SECONDS = Histogram("ecg_gateway_inference_seconds", "Model inference time per batch",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
BATCH_SIZE = Histogram("ecg_gateway_inference_batch_size", "ECGs per inference batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)
TRIAGED = Counter("ecg_gateway_triaged", "Triage results by category", ["category"], registry=REGISTRY)
DELIVERIES = Counter("ecg_gateway_oru_deliveries", "ORU delivery attempts by outcome", ["outcome"],
                     registry=REGISTRY)
ACUTE_E2E_SECONDS = Histogram("ecg_gateway_acute_end_to_end_seconds",
                              "Acute ECG: received to ORU acknowledged",
                              buckets=(0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
PDFS = Counter("ecg_gateway_oru_pdfs", "ORU PDFs not attached in time: late (a correction ORU "
               "brings it) or missing (could not be rendered)", ["outcome"], registry=REGISTRY)
MODEL_INFO = Info("ecg_gateway_model", "The loaded triage model", registry=REGISTRY)
