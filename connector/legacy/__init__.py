"""Legacy flows: ORU^R01 without the CI-SIS profile (a PDF or a text report), turned into CDA R2
level 1 documents by declarative mappings (`mappings/<flow>/mapping.yaml`)."""
