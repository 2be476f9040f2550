"""mssante-connector: HL7 v2 (CI-SIS, legacy ORU, ADT) to MSSanté bridge."""

__version__ = "0.1.0"
