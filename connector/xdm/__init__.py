"""IHE XDM archive (IHE_XDM.zip) and its ebRIM METADATA.XML, built from CDA headers."""

from connector.xdm.archive import build_xdm_zip
from connector.xdm.metadata import (
    ExtraConfidentiality,
    Institution,
    IntendedRecipient,
    Person,
    SubmissionAuthor,
    XdmAction,
    XdmDocument,
    XdmProducer,
    XdmSubmission,
    build_metadata_xml,
    content_type_for_patient_class,
)

__all__ = [
    "ExtraConfidentiality",
    "Institution",
    "IntendedRecipient",
    "Person",
    "SubmissionAuthor",
    "XdmAction",
    "XdmDocument",
    "XdmProducer",
    "XdmSubmission",
    "build_metadata_xml",
    "build_xdm_zip",
    "content_type_for_patient_class",
]
