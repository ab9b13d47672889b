"""De-identification of DICOM headers (PS3.15 Annex E) and per-role attribute filtering. No I/O.

Two forms of the same header pass through here and must come out alike: DICOM JSON objects (PS3.18
§F.2, as made by :func:`radstack.dicom.json_model.dataset_to_json`) for QIDO-RS and WADO-RS metadata,
and pydicom :class:`~pydicom.dataset.Dataset` objects for rebuilt Part-10 instances, C-FIND
identifiers and exported data sets. Both walk the same decision (:meth:`Deidentifier._plan`) and the
same value rewrites, so a header gives the same result in either form.

:class:`Deidentifier` applies the Basic Application Level Confidentiality Profile (PS3.15 §E.1,
Table E.1-1) with the Retain Longitudinal Temporal Information with Modified Dates Option
(PS3.15 §E.3.6): names and IDs are replaced by keyed pseudonyms, instance UIDs by keyed UIDs, and
every date of a patient moves by the same keyed number of days, so a data scientist can still join
studies of one patient and measure intervals but cannot recover who, where or when. Keys are HMACs
of a server secret: the same input always gives the same output, and nobody without the secret can
reverse or recompute them.

:class:`AttributeFilter` is the plainer per-role allow/deny list of attributes.

Both return new objects and never change their input: a JSON document may be a cached object that
other requests are reading.
"""

from __future__ import annotations

import base64
import copy
import datetime
import difflib
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from radstack.dicom.json_model import dataset_to_json
from radstack.dicom.uids import is_valid_uid

__all__ = [
    "DUMMY_TEXT",
    "AttributeFilter",
    "Deidentifier",
    "PrivateTag",
    "ProfileActionValues",
    "basic_profile_action",
    "parse_attribute",
]

JsonDict = dict[str, Any]

#: Root of the UIDs the DICOM standard itself defines (SOP classes, transfer syntaxes, coding
#: schemes, well-known frames of reference and instances): never remapped (PS3.5 §9.1, Annex A).
DICOM_ROOT = "1.2.840.10008."


class ProfileActionValues(Enum):
    """Action codes of PS3.15 Table E.1-1 (legend in PS3.15 §E.1.1)."""

    #: Replace with a non-zero length value that may be a dummy value consistent with the VR.
    D = "D"
    #: Replace with a zero length value, or a dummy value consistent with the VR.
    Z = "Z"
    #: Remove.
    X = "X"
    #: Keep.
    K = "K"
    #: Clean: replace with values of similar meaning known not to contain identifying information.
    C = "C"
    #: Replace with a non-zero length UID that is internally consistent within a set of instances.
    U = "U"


# PS3.15 Table E.1-1, the "Basic Prof." column, DICOM 2024b edition: one row per attribute, as
# "(group,element) action keyword". An action like "X/Z/D" means X unless Z or D is needed to keep
# the IOD conformant (Type 3 / 2 / 1); "X/Z/U*" means X unless Z, or replacing the instance UIDs the
# sequence holds, is needed. "xx" in a tag stands for any value of those digits (repeating groups).
# The rows come from a machine-readable transcription of the published table; every tag and name
# was checked against pydicom's data dictionary. Private attributes (X), which the table covers in
# one row, are handled by PrivateTag allow-lists.
_TABLE_E_1_1 = """
(0000,1000) X      AffectedSOPInstanceUID
(0000,1001) U      RequestedSOPInstanceUID
(0002,0003) U      MediaStorageSOPInstanceUID
(0004,1511) U      ReferencedSOPInstanceUIDInFile
(0008,0012) X/D    InstanceCreationDate
(0008,0013) X/Z/D  InstanceCreationTime
(0008,0014) U      InstanceCreatorUID
(0008,0015) X      InstanceCoercionDateTime
(0008,0017) U      AcquisitionUID
(0008,0018) U      SOPInstanceUID
(0008,0019) U      PyramidUID
(0008,0020) Z      StudyDate
(0008,0021) X/D    SeriesDate
(0008,0022) X/Z    AcquisitionDate
(0008,0023) Z/D    ContentDate
(0008,0024) X      OverlayDate
(0008,0025) X      CurveDate
(0008,002A) X/Z/D  AcquisitionDateTime
(0008,0030) Z      StudyTime
(0008,0031) X/D    SeriesTime
(0008,0032) X/Z    AcquisitionTime
(0008,0033) Z/D    ContentTime
(0008,0034) X      OverlayTime
(0008,0035) X      CurveTime
(0008,0050) Z      AccessionNumber
(0008,0054) X      RetrieveAETitle
(0008,0055) X      StationAETitle
(0008,0058) U      FailedSOPInstanceUIDList
(0008,0080) X/Z/D  InstitutionName
(0008,0081) X      InstitutionAddress
(0008,0082) X/Z/D  InstitutionCodeSequence
(0008,0090) Z      ReferringPhysicianName
(0008,0092) X      ReferringPhysicianAddress
(0008,0094) X      ReferringPhysicianTelephoneNumbers
(0008,0096) X      ReferringPhysicianIdentificationSequence
(0008,009C) Z      ConsultingPhysicianName
(0008,009D) X      ConsultingPhysicianIdentificationSequence
(0008,0106) D      ContextGroupVersion
(0008,0107) D      ContextGroupLocalVersion
(0008,0201) X      TimezoneOffsetFromUTC
(0008,1000) X      NetworkID
(0008,1010) X/Z/D  StationName
(0008,1030) X      StudyDescription
(0008,103E) X      SeriesDescription
(0008,1040) X      InstitutionalDepartmentName
(0008,1041) X      InstitutionalDepartmentTypeCodeSequence
(0008,1048) X      PhysiciansOfRecord
(0008,1049) X      PhysiciansOfRecordIdentificationSequence
(0008,1050) X      PerformingPhysicianName
(0008,1052) X      PerformingPhysicianIdentificationSequence
(0008,1060) X      NameOfPhysiciansReadingStudy
(0008,1062) X      PhysiciansReadingStudyIdentificationSequence
(0008,1070) X/Z/D  OperatorsName
(0008,1072) X/D    OperatorIdentificationSequence
(0008,1080) X      AdmittingDiagnosesDescription
(0008,1084) X      AdmittingDiagnosesCodeSequence
(0008,1088) X      PyramidDescription
(0008,1110) X/Z    ReferencedStudySequence
(0008,1111) X/Z/D  ReferencedPerformedProcedureStepSequence
(0008,1120) X      ReferencedPatientSequence
(0008,1140) X/Z/U* ReferencedImageSequence
(0008,1155) U      ReferencedSOPInstanceUID
(0008,1195) U      TransactionUID
(0008,2111) X      DerivationDescription
(0008,2112) X/Z/U* SourceImageSequence
(0008,3010) U      IrradiationEventUID
(0008,4000) X      IdentifyingComments
(0010,0010) Z      PatientName
(0010,0020) Z/D    PatientID
(0010,0021) X      IssuerOfPatientID
(0010,0030) Z      PatientBirthDate
(0010,0032) X      PatientBirthTime
(0010,0040) Z      PatientSex
(0010,0050) X      PatientInsurancePlanCodeSequence
(0010,0101) X      PatientPrimaryLanguageCodeSequence
(0010,0102) X      PatientPrimaryLanguageModifierCodeSequence
(0010,1000) X      OtherPatientIDs
(0010,1001) X      OtherPatientNames
(0010,1002) X      OtherPatientIDsSequence
(0010,1005) X      PatientBirthName
(0010,1010) X      PatientAge
(0010,1020) X      PatientSize
(0010,1030) X      PatientWeight
(0010,1040) X      PatientAddress
(0010,1050) X      InsurancePlanIdentification
(0010,1060) X      PatientMotherBirthName
(0010,1080) X      MilitaryRank
(0010,1081) X      BranchOfService
(0010,1090) X      MedicalRecordLocator
(0010,1100) X      ReferencedPatientPhotoSequence
(0010,2000) X      MedicalAlerts
(0010,2110) X      Allergies
(0010,2150) X      CountryOfResidence
(0010,2152) X      RegionOfResidence
(0010,2154) X      PatientTelephoneNumbers
(0010,2155) X      PatientTelecomInformation
(0010,2160) X      EthnicGroup
(0010,2180) X      Occupation
(0010,21A0) X      SmokingStatus
(0010,21B0) X      AdditionalPatientHistory
(0010,21C0) X      PregnancyStatus
(0010,21D0) X      LastMenstrualDate
(0010,21F0) X      PatientReligiousPreference
(0010,2203) X/Z    PatientSexNeutered
(0010,2297) X      ResponsiblePerson
(0010,2299) X      ResponsibleOrganization
(0010,4000) X      PatientComments
(0012,0010) D      ClinicalTrialSponsorName
(0012,0020) D      ClinicalTrialProtocolID
(0012,0021) Z      ClinicalTrialProtocolName
(0012,0022) X      IssuerOfClinicalTrialProtocolID
(0012,0023) X      OtherClinicalTrialProtocolIDsSequence
(0012,0030) Z      ClinicalTrialSiteID
(0012,0031) Z      ClinicalTrialSiteName
(0012,0032) X      IssuerOfClinicalTrialSiteID
(0012,0040) D      ClinicalTrialSubjectID
(0012,0041) X      IssuerOfClinicalTrialSubjectID
(0012,0042) D      ClinicalTrialSubjectReadingID
(0012,0043) X      IssuerOfClinicalTrialSubjectReadingID
(0012,0050) Z      ClinicalTrialTimePointID
(0012,0051) X      ClinicalTrialTimePointDescription
(0012,0055) X      IssuerOfClinicalTrialTimePointID
(0012,0060) Z      ClinicalTrialCoordinatingCenterName
(0012,0071) X      ClinicalTrialSeriesID
(0012,0072) X      ClinicalTrialSeriesDescription
(0012,0073) X      IssuerOfClinicalTrialSeriesID
(0012,0081) D      ClinicalTrialProtocolEthicsCommitteeName
(0012,0082) X      ClinicalTrialProtocolEthicsCommitteeApprovalNumber
(0012,0086) X      EthicsCommitteeApprovalEffectivenessStartDate
(0012,0087) X      EthicsCommitteeApprovalEffectivenessEndDate
(0014,407C) X      CalibrationTime
(0014,407E) X      CalibrationDate
(0016,002B) X      MakerNote
(0016,004B) X      DeviceSettingDescription
(0016,004D) X      CameraOwnerName
(0016,004E) X      LensSpecification
(0016,004F) X      LensMake
(0016,0050) X      LensModel
(0016,0051) X      LensSerialNumber
(0016,0070) X      GPSVersionID
(0016,0071) X      GPSLatitudeRef
(0016,0072) X      GPSLatitude
(0016,0073) X      GPSLongitudeRef
(0016,0074) X      GPSLongitude
(0016,0075) X      GPSAltitudeRef
(0016,0076) X      GPSAltitude
(0016,0077) X      GPSTimeStamp
(0016,0078) X      GPSSatellites
(0016,0079) X      GPSStatus
(0016,007A) X      GPSMeasureMode
(0016,007B) X      GPSDOP
(0016,007C) X      GPSSpeedRef
(0016,007D) X      GPSSpeed
(0016,007E) X      GPSTrackRef
(0016,007F) X      GPSTrack
(0016,0080) X      GPSImgDirectionRef
(0016,0081) X      GPSImgDirection
(0016,0082) X      GPSMapDatum
(0016,0083) X      GPSDestLatitudeRef
(0016,0084) X      GPSDestLatitude
(0016,0085) X      GPSDestLongitudeRef
(0016,0086) X      GPSDestLongitude
(0016,0087) X      GPSDestBearingRef
(0016,0088) X      GPSDestBearing
(0016,0089) X      GPSDestDistanceRef
(0016,008A) X      GPSDestDistance
(0016,008B) X      GPSProcessingMethod
(0016,008C) X      GPSAreaInformation
(0016,008D) X      GPSDateStamp
(0016,008E) X      GPSDifferential
(0018,0010) Z/D    ContrastBolusAgent
(0018,0027) X      InterventionDrugStopTime
(0018,0035) X      InterventionDrugStartTime
(0018,1000) X/Z/D  DeviceSerialNumber
(0018,1002) U      DeviceUID
(0018,1004) X      PlateID
(0018,1005) X      GeneratorID
(0018,1007) X      CassetteID
(0018,1008) X      GantryID
(0018,1009) X      UniqueDeviceIdentifier
(0018,100A) X      UDISequence
(0018,100B) U      ManufacturerDeviceClassUID
(0018,1012) X      DateOfSecondaryCapture
(0018,1014) X      TimeOfSecondaryCapture
(0018,1030) X/D    ProtocolName
(0018,1042) X      ContrastBolusStartTime
(0018,1043) X      ContrastBolusStopTime
(0018,1072) X      RadiopharmaceuticalStartTime
(0018,1073) X      RadiopharmaceuticalStopTime
(0018,1078) X      RadiopharmaceuticalStartDateTime
(0018,1079) X      RadiopharmaceuticalStopDateTime
(0018,11BB) D      AcquisitionFieldOfViewLabel
(0018,1200) X      DateOfLastCalibration
(0018,1201) X      TimeOfLastCalibration
(0018,1202) X      DateTimeOfLastCalibration
(0018,1203) Z      CalibrationDateTime
(0018,1204) X      DateOfManufacture
(0018,1205) X      DateOfInstallation
(0018,1400) X/D    AcquisitionDeviceProcessingDescription
(0018,2042) U      TargetUID
(0018,4000) X      AcquisitionComments
(0018,5011) X      TransducerIdentificationSequence
(0018,700A) X/D    DetectorID
(0018,700C) X/D    DateOfLastDetectorCalibration
(0018,700E) X/D    TimeOfLastDetectorCalibration
(0018,9074) D      FrameAcquisitionDateTime
(0018,9151) D      FrameReferenceDateTime
(0018,9185) X      RespiratoryMotionCompensationTechniqueDescription
(0018,9367) D      XRaySourceID
(0018,9369) D      SourceStartDateTime
(0018,936A) D      SourceEndDateTime
(0018,9371) D      XRayDetectorID
(0018,9373) X      XRayDetectorLabel
(0018,937B) X      MultienergyAcquisitionDescription
(0018,937F) X      DecompositionDescription
(0018,9424) X      AcquisitionProtocolDescription
(0018,9516) X/D    StartAcquisitionDateTime
(0018,9517) X/D    EndAcquisitionDateTime
(0018,9623) D      FunctionalSyncPulse
(0018,9701) D      DecayCorrectionDateTime
(0018,9804) D      ExclusionStartDateTime
(0018,9919) Z/D    InstructionPerformedDateTime
(0018,9937) X      RequestedSeriesDescription
(0018,A002) X      ContributionDateTime
(0018,A003) X      ContributionDescription
(0020,000D) U      StudyInstanceUID
(0020,000E) U      SeriesInstanceUID
(0020,0010) Z      StudyID
(0020,0027) X      PyramidLabel
(0020,0052) U      FrameOfReferenceUID
(0020,0200) U      SynchronizationFrameOfReferenceUID
(0020,3401) X      ModifyingDeviceID
(0020,3403) X      ModifiedImageDate
(0020,3405) X      ModifiedImageTime
(0020,3406) X      ModifiedImageDescription
(0020,4000) X      ImageComments
(0020,9158) X      FrameComments
(0020,9161) U      ConcatenationUID
(0020,9164) U      DimensionOrganizationUID
(0028,1199) U      PaletteColorLookupTableUID
(0028,1214) U      LargePaletteColorLookupTableUID
(0028,4000) X      ImagePresentationComments
(0032,0012) X      StudyIDIssuer
(0032,0032) X      StudyVerifiedDate
(0032,0033) X      StudyVerifiedTime
(0032,0034) X      StudyReadDate
(0032,0035) X      StudyReadTime
(0032,1000) X      ScheduledStudyStartDate
(0032,1001) X      ScheduledStudyStartTime
(0032,1010) X      ScheduledStudyStopDate
(0032,1011) X      ScheduledStudyStopTime
(0032,1020) X      ScheduledStudyLocation
(0032,1021) X      ScheduledStudyLocationAETitle
(0032,1030) X      ReasonForStudy
(0032,1032) X      RequestingPhysician
(0032,1033) X      RequestingService
(0032,1040) X      StudyArrivalDate
(0032,1041) X      StudyArrivalTime
(0032,1050) X      StudyCompletionDate
(0032,1051) X      StudyCompletionTime
(0032,1060) X/Z    RequestedProcedureDescription
(0032,1066) X      ReasonForVisit
(0032,1067) X      ReasonForVisitCodeSequence
(0032,1070) X      RequestedContrastAgent
(0032,4000) X      StudyComments
(0034,0001) D      FlowIdentifierSequence
(0034,0002) D      FlowIdentifier
(0034,0005) D      SourceIdentifier
(0034,0007) D      FrameOriginTimestamp
(0038,0004) X      ReferencedPatientAliasSequence
(0038,0010) X      AdmissionID
(0038,0011) X      IssuerOfAdmissionID
(0038,0014) X      IssuerOfAdmissionIDSequence
(0038,001A) X      ScheduledAdmissionDate
(0038,001B) X      ScheduledAdmissionTime
(0038,001C) X      ScheduledDischargeDate
(0038,001D) X      ScheduledDischargeTime
(0038,001E) X      ScheduledPatientInstitutionResidence
(0038,0020) X      AdmittingDate
(0038,0021) X      AdmittingTime
(0038,0030) X      DischargeDate
(0038,0032) X      DischargeTime
(0038,0040) X      DischargeDiagnosisDescription
(0038,0050) X      SpecialNeeds
(0038,0060) X      ServiceEpisodeID
(0038,0061) X      IssuerOfServiceEpisodeID
(0038,0062) X      ServiceEpisodeDescription
(0038,0064) X      IssuerOfServiceEpisodeIDSequence
(0038,0300) X      CurrentPatientLocation
(0038,0400) X      PatientInstitutionResidence
(0038,0500) X      PatientState
(0038,4000) X      VisitComments
(003A,0310) U      MultiplexGroupUID
(003A,0314) D      ImpedanceMeasurementDateTime
(003A,0329) X      WaveformFilterDescription
(003A,032B) X      FilterLookupTableDescription
(0040,0001) X      ScheduledStationAETitle
(0040,0002) X      ScheduledProcedureStepStartDate
(0040,0003) X      ScheduledProcedureStepStartTime
(0040,0004) X      ScheduledProcedureStepEndDate
(0040,0005) X      ScheduledProcedureStepEndTime
(0040,0006) X      ScheduledPerformingPhysicianName
(0040,0007) X      ScheduledProcedureStepDescription
(0040,0009) X      ScheduledProcedureStepID
(0040,000B) X      ScheduledPerformingPhysicianIdentificationSequence
(0040,0010) X      ScheduledStationName
(0040,0011) X      ScheduledProcedureStepLocation
(0040,0012) X      PreMedication
(0040,0241) X      PerformedStationAETitle
(0040,0242) X      PerformedStationName
(0040,0243) X      PerformedLocation
(0040,0244) X      PerformedProcedureStepStartDate
(0040,0245) X      PerformedProcedureStepStartTime
(0040,0250) X      PerformedProcedureStepEndDate
(0040,0251) X      PerformedProcedureStepEndTime
(0040,0253) X      PerformedProcedureStepID
(0040,0254) X      PerformedProcedureStepDescription
(0040,0275) X      RequestAttributesSequence
(0040,0280) X      CommentsOnThePerformedProcedureStep
(0040,0310) X      CommentsOnRadiationDose
(0040,050A) X      SpecimenAccessionNumber
(0040,0512) D      ContainerIdentifier
(0040,0513) Z      IssuerOfTheContainerIdentifierSequence
(0040,051A) X      ContainerDescription
(0040,0551) D      SpecimenIdentifier
(0040,0554) U      SpecimenUID
(0040,0555) X/Z    AcquisitionContextSequence
(0040,0562) Z      IssuerOfTheSpecimenIdentifierSequence
(0040,0600) X      SpecimenShortDescription
(0040,0602) X      SpecimenDetailedDescription
(0040,0610) Z      SpecimenPreparationSequence
(0040,06FA) X      SlideIdentifier
(0040,1001) X      RequestedProcedureID
(0040,1002) X      ReasonForTheRequestedProcedure
(0040,1004) X      PatientTransportArrangements
(0040,1005) X      RequestedProcedureLocation
(0040,100A) X      ReasonForRequestedProcedureCodeSequence
(0040,1010) X      NamesOfIntendedRecipientsOfResults
(0040,1011) X      IntendedRecipientsOfResultsIdentificationSequence
(0040,1101) D      PersonIdentificationCodeSequence
(0040,1102) X      PersonAddress
(0040,1103) X      PersonTelephoneNumbers
(0040,1104) X      PersonTelecomInformation
(0040,1400) X      RequestedProcedureComments
(0040,2001) X      ReasonForTheImagingServiceRequest
(0040,2004) X      IssueDateOfImagingServiceRequest
(0040,2005) X      IssueTimeOfImagingServiceRequest
(0040,2008) X      OrderEnteredBy
(0040,2009) X      OrderEntererLocation
(0040,2010) X      OrderCallbackPhoneNumber
(0040,2011) X      OrderCallbackTelecomInformation
(0040,2016) Z      PlacerOrderNumberImagingServiceRequest
(0040,2017) Z      FillerOrderNumberImagingServiceRequest
(0040,2400) X      ImagingServiceRequestComments
(0040,3001) X      ConfidentialityConstraintOnPatientDataDescription
(0040,4005) X      ScheduledProcedureStepStartDateTime
(0040,4008) X      ScheduledProcedureStepExpirationDateTime
(0040,4010) X      ScheduledProcedureStepModificationDateTime
(0040,4011) X      ExpectedCompletionDateTime
(0040,4023) U      ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
(0040,4025) X      ScheduledStationNameCodeSequence
(0040,4027) X      ScheduledStationGeographicLocationCodeSequence
(0040,4028) X      PerformedStationNameCodeSequence
(0040,4030) X      PerformedStationGeographicLocationCodeSequence
(0040,4034) X      ScheduledHumanPerformersSequence
(0040,4035) X      ActualHumanPerformersSequence
(0040,4036) X      HumanPerformerOrganization
(0040,4037) X      HumanPerformerName
(0040,4050) X      PerformedProcedureStepStartDateTime
(0040,4051) X      PerformedProcedureStepEndDateTime
(0040,4052) X      ProcedureStepCancellationDateTime
(0040,A023) X      FindingsGroupRecordingDateTrial
(0040,A024) X      FindingsGroupRecordingTimeTrial
(0040,A027) D      VerifyingOrganization
(0040,A030) D      VerificationDateTime
(0040,A032) X/D    ObservationDateTime
(0040,A033) X      ObservationStartDateTime
(0040,A073) D      VerifyingObserverSequence
(0040,A075) D      VerifyingObserverName
(0040,A078) X      AuthorObserverSequence
(0040,A07A) X      ParticipantSequence
(0040,A07C) X      CustodialOrganizationSequence
(0040,A082) Z      ParticipationDateTime
(0040,A088) Z      VerifyingObserverIdentificationCodeSequence
(0040,A110) X      DateOfDocumentOrVerbalTransactionTrial
(0040,A112) X      TimeOfDocumentCreationOrVerbalTransactionTrial
(0040,A120) D      DateTime
(0040,A121) D      Date
(0040,A122) D      Time
(0040,A123) D      PersonName
(0040,A124) U      UID
(0040,A13A) D      ReferencedDateTime
(0040,A171) U      ObservationUID
(0040,A172) U      ReferencedObservationUIDTrial
(0040,A192) X      ObservationDateTrial
(0040,A193) X      ObservationTimeTrial
(0040,A307) X      CurrentObserverTrial
(0040,A352) X      VerbalSourceTrial
(0040,A353) X      AddressTrial
(0040,A354) X      TelephoneNumberTrial
(0040,A358) X      VerbalSourceIdentifierCodeSequenceTrial
(0040,A402) U      ObservationSubjectUIDTrial
(0040,A730) D      ContentSequence
(0040,DB06) X      TemplateVersion
(0040,DB07) X      TemplateLocalVersion
(0040,DB0C) U      TemplateExtensionOrganizationUID
(0040,DB0D) U      TemplateExtensionCreatorUID
(0040,E004) X      HL7DocumentEffectiveTime
(0042,0011) D      EncapsulatedDocument
(0044,0004) X      ApprovalStatusDateTime
(0044,000B) X      ProductExpirationDateTime
(0044,0010) X      SubstanceAdministrationDateTime
(0044,0104) D      AssertionDateTime
(0044,0105) X      AssertionExpirationDateTime
(0050,001B) X      ContainerComponentID
(0050,0020) X      DeviceDescription
(0050,0021) X      LongDeviceDescription
(0062,0021) U      TrackingUID
(0064,0003) U      SourceFrameOfReferenceUID
(0068,6226) D      EffectiveDateTime
(0068,6270) D      InformationIssueDateTime
(006A,0003) D      AnnotationGroupUID
(006A,0005) D      AnnotationGroupLabel
(006A,0006) X      AnnotationGroupDescription
(0070,0001) D      GraphicAnnotationSequence
(0070,0082) X      PresentationCreationDate
(0070,0083) X      PresentationCreationTime
(0070,0084) Z/D    ContentCreatorName
(0070,0086) X      ContentCreatorIdentificationCodeSequence
(0070,031A) U      FiducialUID
(0070,1101) U      PresentationDisplayCollectionUID
(0070,1102) U      PresentationSequenceCollectionUID
(0072,000A) D      HangingProtocolCreationDateTime
(0072,005E) D      SelectorAEValue
(0072,005F) D      SelectorASValue
(0072,0061) D      SelectorDAValue
(0072,0063) D      SelectorDTValue
(0072,0065) D      SelectorOBValue
(0072,0066) D      SelectorLOValue
(0072,0068) D      SelectorLTValue
(0072,006A) D      SelectorPNValue
(0072,006B) D      SelectorTMValue
(0072,006C) D      SelectorSHValue
(0072,006D) D      SelectorUNValue
(0072,006E) D      SelectorSTValue
(0072,0070) D      SelectorUTValue
(0072,0071) D      SelectorURValue
(0074,1234) X      ReceivingAE
(0074,1236) X      RequestingAE
(0088,0140) U      StorageMediaFileSetUID
(0088,0200) X      IconImageSequence
(0088,0904) X      TopicTitle
(0088,0906) X      TopicSubject
(0088,0910) X      TopicAuthor
(0088,0912) X      TopicKeywords
(0100,0420) X      SOPAuthorizationDateTime
(0400,0100) U      DigitalSignatureUID
(0400,0105) D      DigitalSignatureDateTime
(0400,0115) D      CertificateOfSigner
(0400,0310) X      CertifiedTimestamp
(0400,0402) X      ReferencedDigitalSignatureSequence
(0400,0403) X      ReferencedSOPInstanceMACSequence
(0400,0404) X      MAC
(0400,0550) X      ModifiedAttributesSequence
(0400,0551) X      NonconformingModifiedAttributesSequence
(0400,0552) X      NonconformingDataElementValue
(0400,0561) X      OriginalAttributesSequence
(0400,0562) D      AttributeModificationDateTime
(0400,0563) D      ModifyingSystem
(0400,0564) Z      SourceOfPreviousValues
(0400,0565) D      ReasonForTheAttributeModification
(0400,0600) X      InstanceOriginStatus
(2030,0020) X      TextString
(2100,0040) X      CreationDate
(2100,0050) X      CreationTime
(2100,0070) X      Originator
(2100,0140) D      DestinationAE
(2200,0002) X/Z    LabelText
(2200,0005) X/Z    BarcodeValue
(3002,0121) X      PositionAcquisitionTemplateName
(3002,0123) X      PositionAcquisitionTemplateDescription
(3006,0002) D      StructureSetLabel
(3006,0004) X      StructureSetName
(3006,0006) X      StructureSetDescription
(3006,0008) Z      StructureSetDate
(3006,0009) Z      StructureSetTime
(3006,0024) U      ReferencedFrameOfReferenceUID
(3006,0026) Z      ROIName
(3006,0028) X      ROIDescription
(3006,002D) X      ROIDateTime
(3006,002E) X      ROIObservationDateTime
(3006,0038) X      ROIGenerationDescription
(3006,004D) X      ROICreatorSequence
(3006,004E) X      ROIInterpreterSequence
(3006,0085) X      ROIObservationLabel
(3006,0088) X      ROIObservationDescription
(3006,00A6) Z      ROIInterpreter
(3006,00C2) U      RelatedFrameOfReferenceUID
(3008,0024) D      TreatmentControlPointDate
(3008,0025) D      TreatmentControlPointTime
(3008,0054) X/D    FirstTreatmentDate
(3008,0056) X/D    MostRecentTreatmentDate
(3008,0105) X/Z    SourceSerialNumber
(3008,0162) D      SafePositionExitDate
(3008,0164) D      SafePositionExitTime
(3008,0166) D      SafePositionReturnDate
(3008,0168) D      SafePositionReturnTime
(3008,0250) X/D    TreatmentDate
(3008,0251) X/D    TreatmentTime
(300A,0002) D      RTPlanLabel
(300A,0003) X      RTPlanName
(300A,0004) X      RTPlanDescription
(300A,0006) X/D    RTPlanDate
(300A,0007) X/D    RTPlanTime
(300A,000B) X      TreatmentSites
(300A,000E) X      PrescriptionDescription
(300A,0013) U      DoseReferenceUID
(300A,0016) X      DoseReferenceDescription
(300A,0072) X      FractionGroupDescription
(300A,0083) U      ReferencedDoseReferenceUID
(300A,00B2) X/Z    TreatmentMachineName
(300A,00C3) X      BeamDescription
(300A,00DD) X      BolusDescription
(300A,0196) X      FixationDeviceDescription
(300A,01A6) X      ShieldingDeviceDescription
(300A,01B2) X      SetupTechniqueDescription
(300A,0216) X      SourceManufacturer
(300A,022C) D      SourceStrengthReferenceDate
(300A,022E) D      SourceStrengthReferenceTime
(300A,02EB) X      CompensatorDescription
(300A,0608) D      TreatmentPositionGroupLabel
(300A,0609) U      TreatmentPositionGroupUID
(300A,0611) Z      RTAccessoryHolderSlotID
(300A,0615) Z      RTAccessoryDeviceSlotID
(300A,0619) D      RadiationDoseIdentificationLabel
(300A,0623) D      RadiationDoseInVivoMeasurementLabel
(300A,062A) D      RTToleranceSetLabel
(300A,0650) U      PatientSetupUID
(300A,0676) X      EquipmentFrameOfReferenceDescription
(300A,067C) D      RadiationGenerationModeLabel
(300A,067D) Z      RadiationGenerationModeDescription
(300A,0700) U      TreatmentSessionUID
(300A,0734) D      TreatmentToleranceViolationDescription
(300A,0736) D      TreatmentToleranceViolationDateTime
(300A,073A) D      RecordedRTControlPointDateTime
(300A,0741) D      InterlockDateTime
(300A,0742) D      InterlockDescription
(300A,0760) D      OverrideDateTime
(300A,0783) D      InterlockOriginDescription
(300A,0785) U      ReferencedTreatmentPositionGroupUID
(300A,078E) X      PatientTreatmentPreparationProcedureParameterDescription
(300A,0792) X      PatientTreatmentPreparationMethodDescription
(300A,0794) X      PatientSetupPhotoDescription
(300A,079A) X      DisplacementReferenceLabel
(300C,0113) X      ReasonForOmissionDescription
(300C,0127) D      BeamHoldTransitionDateTime
(300E,0004) Z      ReviewDate
(300E,0005) Z      ReviewTime
(300E,0008) X/Z    ReviewerName
(3010,0006) U      ConceptualVolumeUID
(3010,000B) U      ReferencedConceptualVolumeUID
(3010,000F) Z      ConceptualVolumeCombinationDescription
(3010,0013) U      ConstituentConceptualVolumeUID
(3010,0015) U      SourceConceptualVolumeUID
(3010,0017) Z      ConceptualVolumeDescription
(3010,001B) Z      DeviceAlternateIdentifier
(3010,002D) D      DeviceLabel
(3010,0031) U      ReferencedFiducialsUID
(3010,0033) D      UserContentLabel
(3010,0034) D      UserContentLongLabel
(3010,0035) D      EntityLabel
(3010,0036) X      EntityName
(3010,0037) X      EntityDescription
(3010,0038) D      EntityLongLabel
(3010,003B) U      RTTreatmentPhaseUID
(3010,0043) Z      ManufacturerDeviceIdentifier
(3010,004C) X/D    IntendedPhaseStartDate
(3010,004D) X/D    IntendedPhaseEndDate
(3010,0054) D      RTPrescriptionLabel
(3010,0056) X/D    RTTreatmentApproachLabel
(3010,005A) Z      RTPhysicianIntentNarrative
(3010,005C) Z      ReasonForSuperseding
(3010,0061) X      PriorTreatmentDoseDescription
(3010,006E) U      DosimetricObjectiveUID
(3010,006F) U      ReferencedDosimetricObjectiveUID
(3010,0077) X/D    TreatmentSite
(3010,007A) Z      TreatmentTechniqueNotes
(3010,007B) Z      PrescriptionNotes
(3010,007F) Z      FractionationNotes
(3010,0081) Z      PrescriptionNotesSequence
(3010,0085) X      IntendedFractionStartTime
(4000,0010) X      Arbitrary
(4000,4000) X      TextComments
(4008,0040) X      ResultsID
(4008,0042) X      ResultsIDIssuer
(4008,0100) X      InterpretationRecordedDate
(4008,0101) X      InterpretationRecordedTime
(4008,0102) X      InterpretationRecorder
(4008,0108) X      InterpretationTranscriptionDate
(4008,0109) X      InterpretationTranscriptionTime
(4008,010A) X      InterpretationTranscriber
(4008,010B) X      InterpretationText
(4008,010C) X      InterpretationAuthor
(4008,0111) X      InterpretationApproverSequence
(4008,0112) X      InterpretationApprovalDate
(4008,0113) X      InterpretationApprovalTime
(4008,0114) X      PhysicianApprovingInterpretation
(4008,0115) X      InterpretationDiagnosisDescription
(4008,0118) X      ResultsDistributionListSequence
(4008,0119) X      DistributionName
(4008,011A) X      DistributionAddress
(4008,0200) X      InterpretationID
(4008,0202) X      InterpretationIDIssuer
(4008,0300) X      Impressions
(4008,4000) X      ResultsComments
(50xx,xxxx) X      CurveData
(60xx,3000) X      OverlayData
(60xx,4000) X      OverlayComments
(FFFA,FFFA) X      DigitalSignaturesSequence
(FFFC,FFFC) X      DataSetTrailingPadding
"""


def _parse_table(text: str) -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """Rows of :data:`_TABLE_E_1_1` as exact tags and (mask, value) pairs for repeating groups."""
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for row in text.strip().splitlines():
        tag_text, action, _keyword = row.split()
        digits = tag_text.strip("()").replace(",", "")
        if "x" in digits:
            mask = int("".join("0" if c == "x" else "F" for c in digits), 16)
            masked.append((mask, int(digits.replace("x", "0"), 16), action))
        else:
            exact[int(digits, 16)] = action
    return exact, tuple(masked)


_BASIC_PROFILE, _BASIC_PROFILE_MASKED = _parse_table(_TABLE_E_1_1)

#: Removed although Table E.1-1 does not list them: the patient's birth and death dates kept in
#: another calendar (the birth date in another form); the File Meta Information's AE titles and
#: private information (PS3.10 §7.1), which name the sending system as Station AE Title (X) does;
#: and a directory record's Referenced File ID (PS3.3 §F.3.2.2), a file path that exporters
#: often build from the patient's ID or name.
_ALSO_REMOVED = frozenset(
    {
        0x00100033,
        0x00100034,
        0x00100035,
        0x00020016,
        0x00020017,
        0x00020018,
        0x00020100,
        0x00020102,
        0x00041500,
    }
)

#: Temporal attributes the Modified Dates option leaves to the Basic Profile: the patient's birth,
#: an identifier in itself (Table E.1-1 gives it no option action), and the versions of coding
#: resources, which date a code list rather than the patient's care.
_NOT_LONGITUDINAL = frozenset({0x00100030, 0x00100032, 0x00080106, 0x00080107, 0x0040DB06, 0x0040DB07})

#: UID attributes that name a kind of thing rather than an instance: SOP classes, transfer
#: syntaxes, coding schemes, resources and systems. The profile replaces instance UIDs only
#: (PS3.15 §E.1, "Retain UIDs" option not in use), so these are kept.
_NON_INSTANCE_UIDS = frozenset(
    tag
    for keyword, tag in keyword_dict.items()
    if dictionary_VR(tag) == "UI"
    and tag not in _BASIC_PROFILE
    and (
        re.search(r"SOPClass|ClassUID|TransferSyntaxUID", keyword) is not None
        or keyword
        in {
            "CodingSchemeUID",
            "ContextGroupExtensionCreatorUID",
            "ContextUID",
            "CreatorVersionUID",
            "HomeCommunityID",
            "MappingResourceUID",
            "PrivateInformationCreatorUID",
            "RepositoryUniqueID",
            "RetrieveLocationUID",
            "SegmentationTemplateUID",
        }
    )
)

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Dummy value of action D for text VRs (PS3.15 §E.1.1: "consistent with the VR").
DUMMY_TEXT = "ANONYMIZED"
#: Date shifts of the Modified Dates option: one to ten years back, never zero.
_SHIFT_DAYS = (365, 3650)
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DT = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{0,6}(?:\.\d{1,6})?(?:[+-]\d{4})?)")

#: CID 7050 codes of what was applied (PS3.16), written in De-identification Method Code Sequence.
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)


def _action_text(tag: int) -> str | None:
    """The table's actions for ``tag`` as written there (``"X/Z/D"``), or ``None``."""
    action = _BASIC_PROFILE.get(tag)
    if action is None:
        for mask, value, masked_action in _BASIC_PROFILE_MASKED:
            if tag & mask == value:
                return masked_action
    return action


def basic_profile_action(tag: int) -> tuple[ProfileActionValues, ...] | None:
    """The Basic Profile actions PS3.15 Table E.1-1 gives a standard attribute.

    Parameters
    ----------
    tag
        The attribute's tag as an int, e.g. ``0x00100010``.

    Returns
    -------
    tuple of ProfileActionValues, or None
        The actions in the table's order: ``(Z,)`` for Patient's Name, ``(X, Z, D)`` for
        Institution Name (X unless Z or D is needed for the IOD to conform), ``(X, Z, U)`` for
        the ``X/Z/U*`` of Referenced Image Sequence (U applying to the UIDs inside it). ``None``
        for an attribute the table does not list. Private attributes are answered by
        :class:`Deidentifier`'s allow-list, not here.
    """
    text = _action_text(tag)
    if text is None:
        return None
    return tuple(ProfileActionValues(code.rstrip("*")) for code in text.split("/"))


@dataclass(frozen=True)
class PrivateTag:
    """A private attribute to keep, named as PS3.5 §7.8.1 reserves it.

    Parameters
    ----------
    group
        The odd group, e.g. ``0x0029``.
    creator
        The Private Creator value that reserved the block, e.g. ``"SIEMENS CSA HEADER"``.
    offset
        The element's offset in its block (the low byte of the element number), e.g. ``0x10``.
    """

    group: int
    creator: str
    offset: int

    def __post_init__(self) -> None:
        if not (self.group & 1 and 0x0009 <= self.group <= 0xFFFD):
            raise ValueError(f"private group {self.group:#06x} is not an odd group from 0009 to FFFD")
        if not 0 <= self.offset <= 0xFF:
            raise ValueError(f"private element offset {self.offset:#x} is not in 00-FF")
        if not self.creator.strip():
            raise ValueError("a private tag needs the Private Creator that reserved its block")


class _Op(Enum):
    """What becomes of one element: the table's actions resolved for the element's VR."""

    KEEP = "keep"
    REMOVE = "remove"
    EMPTY = "empty"
    DUMMY = "dummy"
    UID = "uid"
    SHIFT = "shift"
    RECURSE = "recurse"
    URI = "uri"
    PATIENT_NAME = "patient name"
    PATIENT_ID = "patient id"


#: Operations that rewrite each value of an element.
_REWRITES = frozenset({_Op.UID, _Op.SHIFT, _Op.URI})

# Without the IOD at hand the Type of an attribute is unknown, so a choice like X/D takes the
# action that conforms whatever the Type: D (a dummy) where offered, else Z (empty).
_OP_OF_ACTION = {
    "X": _Op.REMOVE,
    "Z": _Op.EMPTY,
    "D": _Op.DUMMY,
    "U": _Op.UID,
    "X/Z": _Op.EMPTY,
    "X/D": _Op.DUMMY,
    "Z/D": _Op.DUMMY,
    "X/Z/D": _Op.DUMMY,
    "X/Z/U*": _Op.RECURSE,
}


def _fit_vr(op: _Op, vr: str) -> _Op:
    """``op`` as it applies to an element of ``vr``."""
    if vr == "SQ":
        # A sequence is kept as its items, each de-identified in turn; D or U on a sequence
        # means the same (its identifying content is replaced item by item).
        return op if op in (_Op.REMOVE, _Op.EMPTY) else _Op.RECURSE
    if op is _Op.RECURSE:
        return _Op.EMPTY
    if op is _Op.DUMMY and vr == "UI":
        return _Op.UID
    if op is _Op.UID and vr != "UI":
        return _Op.REMOVE  # an unparsed UID cannot be replaced, so it goes
    return op


def _dummy(vr: str) -> str | int | bytes | None:
    """The dummy value of action D for ``vr``; ``None`` where only an empty value is safe."""
    if vr in _TEXT_VRS:
        return DUMMY_TEXT
    if vr in _NUMBER_VRS:
        return 0
    if vr in _BINARY_VRS:
        return bytes(8)  # a whole number of values for every binary VR
    return {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D"}.get(vr)


def _shift(vr: str, text: str, days: int) -> str | None:
    """A DA or DT value moved by ``days``; ``None`` for a value that is not a whole date.

    Partial dates (``"2019"``), ranges (``"20190101-"``) and malformed values cannot be shifted
    and must not leak, so the caller empties the element instead.
    """
    match = (_DA if vr == "DA" else _DT).fullmatch(text.strip())
    if match is None:
        return None
    try:
        moved = datetime.date(int(match[1]), int(match[2]), int(match[3])) + datetime.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    rest = match[4] if vr == "DT" else ""
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}{rest}"


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _dataset_vr(ds: Dataset, tag: BaseTag) -> str:
    """The VR :func:`~radstack.dicom.json_model.dataset_to_json` writes for an element.

    An explicit VR is read from the raw element without parsing it; implicit or UN elements are
    parsed (on ``ds``, which callers own) so pydicom can resolve the VR from its dictionary.
    """
    raw = ds._dict[tag]
    if isinstance(raw, RawDataElement) and raw.VR and raw.VR != "UN" and not raw.is_implicit_VR:
        return str(raw.VR)
    return str(ds[tag].VR)


def _element_strings(elem: DataElement) -> list[str | None]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [None if v is None else str(v) for v in value]
    return [str(value)]


def _json_copy(element: Mapping[str, Any], rewrite_uri: Callable[[str], str] | None = None) -> JsonDict:
    """A copy of one DICOM JSON element that shares nothing mutable with it."""
    if element.get("vr") == "SQ":
        return copy.deepcopy(dict(element))
    out = dict(element)
    value = out.get("Value")
    if isinstance(value, list):
        out["Value"] = [dict(v) if isinstance(v, dict) else v for v in value]
    uri = out.get("BulkDataURI")
    if rewrite_uri is not None and isinstance(uri, str):
        out["BulkDataURI"] = rewrite_uri(uri)
    return out


def _json_value(vr: str, value: str | int | bytes | None) -> JsonDict:
    """DICOM JSON of an element holding one value (PS3.18 §F.2.2)."""
    if value is None or value == "":
        return {"vr": vr}
    if isinstance(value, bytes):
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


def _json_creators(ds: Mapping[str, Any]) -> dict[tuple[int, int], str]:
    """Private Creator values of one JSON data set, by (group, block) (PS3.5 §7.8.1)."""
    creators: dict[tuple[int, int], str] = {}
    for key, element in ds.items():
        tag = int(key, 16)
        group, number = tag >> 16, tag & 0xFFFF
        values = element.get("Value") if isinstance(element, Mapping) else None
        if group & 1 and 0x10 <= number <= 0xFF and values and isinstance(values[0], str):
            creators[(group, number)] = values[0].strip()
    return creators


def _dataset_creators(ds: Dataset) -> dict[tuple[int, int], str]:
    """Private Creator values of one data set, by (group, block) (PS3.5 §7.8.1)."""
    creators: dict[tuple[int, int], str] = {}
    for tag in list(ds._dict):
        group, number = tag >> 16, tag & 0xFFFF
        if group & 1 and 0x10 <= number <= 0xFF:
            value = ds[tag].value
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            if isinstance(value, str) and value:
                creators[(group, number)] = value.strip()
    return creators


def _marker_dataset() -> Dataset:
    """What PS3.15 §E.1.1 and §E.3.6 add to a de-identified instance."""
    marker = Dataset()
    marker.PatientIdentityRemoved = "YES"
    marker.DeidentificationMethod = [meaning for _, meaning in _METHOD_CODES]
    items = []
    for value, meaning in _METHOD_CODES:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    marker.DeidentificationMethodCodeSequence = Sequence(items)
    marker.LongitudinalTemporalInformationModified = "MODIFIED"
    return marker


@dataclass(frozen=True)
class _Call:
    """What one de-identification call fills in: the patient's pseudonyms and date shift."""

    days: int
    name: str
    patient_id: str
    rewrite_uri: Callable[[str], str]


class Deidentifier:
    """The Basic Application Level Confidentiality Profile (PS3.15 §E.1) with keyed pseudonyms.

    Options in force (PS3.15 §E.3): Retain Longitudinal Temporal Information with Modified Dates
    (§E.3.6); not Retain UIDs (§E.3.9), so instance UIDs are replaced; not Retain Safe Private
    (§E.3.10), so private attributes go unless listed in ``keep_private``.

    The actions of Table E.1-1 are resolved per element:

    * X removes, Z empties, D writes a dummy of the VR (``ANONYMIZED``, ``0``, zero bytes), U
      replaces each UID with :meth:`uid`. Where the table offers a choice for the IOD's sake
      (``X/D``, ``X/Z/D``, ``Z/D``), D is taken, else Z: it conforms whatever the attribute's Type.
    * A sequence that is not removed or emptied keeps its items, each de-identified the same way.
    * Patient's Name becomes ``ANON^<code>`` and Patient ID ``ANON-<code>``, both keyed on the
      patient (:meth:`pseudonym`), so one patient keeps one pseudonym across studies.
    * Every DA value, and the date of every DT value, moves back by :meth:`date_shift_days`; TM
      values are kept (a whole number of days does not change a time of day). Partial or range
      dates, as query results may hold, cannot be moved and are emptied. This covers dates the
      table does not list too, so no real date remains beside shifted ones; the patient's birth
      date and time take their Basic Profile action (Z, X).
    * UID attributes that the table does not list are replaced too unless they name a class
      rather than an instance (SOP Class, Transfer Syntax, Coding Scheme UIDs). UIDs under the
      DICOM root ``1.2.840.10008.`` are never replaced: they are defined by the standard.
    * Person names the table does not list (an evaluator's, a reviewer's) get a dummy too:
      every PN value names someone.
    * URIs (UR values, BulkDataURIs) that the table does not list go through ``rewrite_uri``,
      by default :meth:`remap_uri`: radstack's URLs carry the real UIDs in their path.
    * Private attributes are removed unless ``keep_private`` lists them, and so are a few
      attributes the table omits but that identify all the same (:data:`_ALSO_REMOVED`).
    * Patient Identity Removed (0012,0062) = ``YES``, De-identification Method (0012,0063) and
      its Code Sequence (0012,0064) with CID 7050 codes 113100 and 113107 are added (§E.1.1), and
      Longitudinal Temporal Information Modified (0028,0303) = ``MODIFIED`` (§E.3.6).

    Parameters
    ----------
    secret
        Key of every HMAC-SHA256 here; at least 16 bytes. Whoever holds it can recompute
        pseudonyms from real values, so it is as sensitive as the data.
    uid_root
        Root of replacement UIDs. The default ``2.25`` makes them UUID-derived UIDs
        (PS3.5 §B.2).
    keep_private
        Private attributes to keep (with their Private Creator); all others are removed.

    Raises
    ------
    ValueError
        If ``secret`` is shorter than 16 bytes or ``uid_root`` is not a valid UID root short
        enough for a 39-digit suffix.
    """

    def __init__(
        self, secret: bytes, *, uid_root: str = "2.25", keep_private: Iterable[PrivateTag] = ()
    ) -> None:
        if len(secret) < 16:
            raise ValueError(
                f"the de-identification secret is {len(secret)} bytes long: at least 16 random bytes are needed"
            )
        if not is_valid_uid(uid_root) or len(uid_root) > 64 - 40:
            raise ValueError(
                f"uid_root {uid_root!r} is not a UID root of at most 24 characters "
                "(PS3.5 §9.1: 64 characters in all, and the suffix takes up to 40)"
            )
        self._secret = bytes(secret)
        self._uid_root = uid_root
        self._keep_private = frozenset(keep_private)
        self._kept_creators = frozenset((p.group, p.creator) for p in self._keep_private)

    def _digest(self, purpose: bytes, value: str) -> bytes:
        return hmac.new(self._secret, purpose + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, real: str) -> str:
        """The replacement of an instance UID: the same for the same UID, every time.

        It is ``<uid_root>.`` and the decimal of the first 128 bits of
        HMAC-SHA256(secret, ``b"uid:" + real``), with the version and variant bits of an
        RFC 9562 version-8 UUID set, so under ``2.25`` it is a UUID-derived UID (PS3.5 §B.2): at
        most 44 characters, no component with a leading zero (PS3.5 §9.1). The store calls this at
        ingest to index the pseudonymous UIDs a de-identified client will ask for.

        Parameters
        ----------
        real
            The UID to replace; padding is ignored. A UID under the DICOM root
            ``1.2.840.10008.`` is returned as it is.
        """
        real = real.strip(" \0")
        if not real or real.startswith(DICOM_ROOT):
            return real
        raw = bytearray(self._digest(b"uid:", real)[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: a custom UUID (RFC 9562 §5.8)
        raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
        return f"{self._uid_root}.{int.from_bytes(raw, 'big')}"

    def pseudonym(self, value: str, kind: str) -> str:
        """A keyed pseudonym of a name or identifier: the same for the same value and kind.

        Parameters
        ----------
        value
            What to replace, e.g. the patient key.
        kind
            What the pseudonym stands for; it separates the keys, so a name and an ID made from
            one value differ. ``"name"`` gives a Person Name (PS3.5 §6.2) ``ANON^<code>``; any
            other kind gives ``ANON-<code>`` (21 characters: a valid LO value such as Patient ID).
            ``<code>`` is 16 base32 characters of the HMAC (80 bits).
        """
        if not kind:
            raise ValueError("a pseudonym needs a kind, e.g. 'name' or 'id'")
        digest = self._digest(b"pseudonym:" + kind.encode("utf-8") + b"\0", value)
        code = base64.b32encode(digest[:10]).decode("ascii")
        return f"ANON^{code}" if kind == "name" else f"ANON-{code}"

    def date_shift_days(self, patient_key: str) -> int:
        """Days every date of the patient moves by: keyed, in [-3650, -365], never 0.

        The same for every study of the patient, so the intervals between them are kept
        (PS3.15 §E.3.6, Retain Longitudinal Temporal Information with Modified Dates).
        """
        low, high = _SHIFT_DAYS
        number = int.from_bytes(self._digest(b"dateshift:", patient_key)[:8], "big")
        return -(low + number % (high - low + 1))

    def remap_uri(self, uri: str) -> str:
        """``uri`` with each path segment that is a dotted UID replaced by :meth:`uid`.

        The default rewrite of BulkDataURIs: radstack's own URIs name the study, series and
        instance UIDs in their path, which must not reach a de-identified client. Host, port and
        query are kept.
        """
        parts = urlsplit(uri)
        path = "/".join(
            self.uid(segment) if "." in segment and is_valid_uid(segment) else segment
            for segment in parts.path.split("/")
        )
        return urlunsplit(parts._replace(path=path))

    def _call(self, patient_key: str, rewrite_uri: Callable[[str], str] | None) -> _Call:
        return _Call(
            days=self.date_shift_days(patient_key),
            name=self.pseudonym(patient_key, "name"),
            patient_id=self.pseudonym(patient_key, "id"),
            rewrite_uri=rewrite_uri or self.remap_uri,
        )

    def _plan(self, tag: int, vr: str, creators: Mapping[tuple[int, int], str]) -> _Op:
        """What becomes of an element of ``tag`` and ``vr``; the single rule both forms follow."""
        group, number = tag >> 16, tag & 0xFFFF
        if number == 0 and group != 0x0002:
            return _Op.REMOVE  # group lengths: stale once anything is removed (PS3.5 §7.2)
        if group & 1:
            return self._plan_private(group, number, vr, creators)
        if tag == _PATIENT_NAME:
            return _Op.PATIENT_NAME if vr == "PN" else _Op.REMOVE
        if tag == _PATIENT_ID:
            return _Op.PATIENT_ID if vr == "LO" else _Op.REMOVE
        if tag in _ALSO_REMOVED:
            return _Op.REMOVE
        if vr in _TEMPORAL_VRS and tag not in _NOT_LONGITUDINAL:
            return _Op.KEEP if vr == "TM" else _Op.SHIFT
        action = _action_text(tag)
        if action is not None:
            return _fit_vr(_OP_OF_ACTION[action], vr)
        if vr == "UI" and tag not in _NON_INSTANCE_UIDS:
            return _Op.UID
        if vr == "PN":
            return _Op.DUMMY  # every person name names someone, listed or not
        if vr == "UR":
            return _Op.URI  # e.g. QIDO's Retrieve URL (0008,1190), which names the study UID
        return _Op.RECURSE if vr == "SQ" else _Op.KEEP

    def _plan_private(self, group: int, number: int, vr: str, creators: Mapping[tuple[int, int], str]) -> _Op:
        if number < 0x10:
            return _Op.REMOVE
        if number <= 0xFF:
            kept = (group, creators.get((group, number))) in self._kept_creators
        else:
            creator = creators.get((group, number >> 8))
            kept = creator is not None and PrivateTag(group, creator, number & 0xFF) in self._keep_private
        if not kept:
            return _Op.REMOVE
        return _Op.RECURSE if vr == "SQ" else _Op.KEEP

    def _rewrite(self, op: _Op, vr: str, values: list[Any], call: _Call) -> list[str | None] | None:
        """Values after UID or URI replacement or date shifting; ``None`` to empty the element."""
        out: list[str | None] = []
        for value in values:
            if value is None or value == "":
                out.append(value)
            elif not isinstance(value, str):
                return None
            elif op is _Op.UID:
                out.append(self.uid(value))
            elif op is _Op.URI:
                out.append(call.rewrite_uri(value))
            else:
                shifted = _shift(vr, value, call.days)
                if shifted is None:
                    return None
                out.append(shifted)
        return out

    # -- DICOM JSON ---------------------------------------------------------------------------

    def apply_json(
        self,
        ds: Mapping[str, Any],
        patient_key: str,
        *,
        rewrite_uri: Callable[[str], str] | None = None,
    ) -> JsonDict:
        """De-identify a DICOM JSON object (PS3.18 §F.2): a QIDO result, metadata, an item.

        Parameters
        ----------
        ds
            The object; it is not changed, and the result shares nothing mutable with it.
        patient_key
            The store's identity of the patient (e.g. issuer and Patient ID): it keys the
            pseudonyms and the date shift, so it must be the same for every study of the patient.
        rewrite_uri
            Rewrites the BulkDataURI of each kept bulk element, and each UR value (such as
            QIDO's Retrieve URL); by default :meth:`remap_uri`, which replaces the UIDs in the
            URI's path. Elements that are removed or replaced lose their BulkDataURI.

        Returns
        -------
        dict
            A new DICOM JSON object with its keys in tag order.
        """
        call = self._call(patient_key, rewrite_uri)
        out = self._json_level(ds, call)
        out.update(dataset_to_json(_marker_dataset(), ""))
        return dict(sorted(out.items()))

    def _json_level(self, ds: Mapping[str, Any], call: _Call) -> JsonDict:
        creators = _json_creators(ds)
        out: JsonDict = {}
        for key, element in ds.items():
            tag = int(key, 16)
            vr = str(element.get("vr") or _dictionary_vr(tag))
            new = self._json_element(self._plan(tag, vr, creators), vr, element, call)
            if new is not None:
                out[f"{tag:08X}"] = new
        return dict(sorted(out.items()))

    def _json_element(self, op: _Op, vr: str, element: Mapping[str, Any], call: _Call) -> JsonDict | None:
        if op is _Op.REMOVE:
            return None
        if op is _Op.KEEP:
            return _json_copy(element, call.rewrite_uri)
        if op is _Op.RECURSE:
            items = [self._json_level(item, call) for item in element.get("Value") or []]
            return {"vr": vr, "Value": items} if items else {"vr": vr}
        if op in _REWRITES:
            values = self._rewrite(op, vr, list(element.get("Value") or []), call)
            return {"vr": vr, "Value": values} if values else {"vr": vr}
        return _json_value(vr, self._replacement(op, vr, call))

    def _replacement(self, op: _Op, vr: str, call: _Call) -> str | int | bytes | None:
        """The new value of an EMPTY, DUMMY, PATIENT_NAME or PATIENT_ID element."""
        if op is _Op.PATIENT_NAME:
            return call.name
        if op is _Op.PATIENT_ID:
            return call.patient_id
        if op is _Op.DUMMY:
            return _dummy(vr)
        return None

    # -- pydicom datasets ---------------------------------------------------------------------

    def apply_dataset(
        self, ds: Dataset, patient_key: str, *, rewrite_uri: Callable[[str], str] | None = None
    ) -> Dataset:
        """De-identify a pydicom data set: a Part-10 instance, a C-FIND identifier, an export.

        The File Meta Information is de-identified too: Media Storage SOP Instance UID becomes
        the new SOP Instance UID, the sender's AE titles go, and the preamble (which may carry
        application data, PS3.10 §7.5) is zeroed. Pixel data is kept as it is: burned-in text is
        the Clean Pixel Data option's matter (PS3.15 §E.3.1), not this profile's.

        Parameters
        ----------
        ds
            The data set (a :class:`~pydicom.dataset.FileDataset` too); it is not changed.
        patient_key
            As for :meth:`apply_json`.
        rewrite_uri
            As for :meth:`apply_json`; here it rewrites UR values (a data set has no
            BulkDataURIs).

        Returns
        -------
        Dataset
            A new data set of the same class; unchanged elements stay unparsed.
        """
        call = self._call(patient_key, rewrite_uri)
        out = copy.deepcopy(ds)
        self._dataset_level(out, call)
        meta = getattr(out, "file_meta", None)
        if meta is not None:
            self._dataset_level(meta, call)
        if getattr(out, "preamble", None) is not None:
            out.preamble = bytes(128)
        for elem in _marker_dataset():
            out[elem.tag] = elem
        return out

    def _dataset_level(self, ds: Dataset, call: _Call) -> None:
        """De-identify ``ds`` in place: it is always the caller's own copy."""
        creators = _dataset_creators(ds)
        for tag in list(ds._dict):
            vr = _dataset_vr(ds, tag)
            op = self._plan(int(tag), vr, creators)
            if op is _Op.KEEP:
                continue
            if op is _Op.REMOVE:
                del ds[tag]
            elif op is _Op.RECURSE:
                for item in ds[tag].value or []:
                    self._dataset_level(item, call)
            elif op in _REWRITES:
                values = self._rewrite(op, vr, _element_strings(ds[tag]), call)
                kept = ["" if v is None else v for v in values or []]
                ds[tag] = DataElement(tag, vr, kept[0] if len(kept) == 1 else kept or "")
            else:
                value = self._replacement(op, vr, call)
                ds[tag] = DataElement(tag, vr, empty_value_for_VR(vr) if value is None else value)


#: Attributes a filter never removes, so images still display: every UID (checked by VR), the
#: Image Pixel module (PS3.3 §C.7.6.3), Multi-frame and functional groups (§C.7.6.6, §C.7.6.16),
#: Modality and VOI LUT (§C.11.1, §C.11.2) and Specific Character Set.
_ALWAYS_KEPT_KEYWORDS = (
    "SpecificCharacterSet",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "PixelAspectRatio",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ICCProfile",
    "ColorSpace",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
)
_ALWAYS_KEPT = frozenset(keyword_dict[k] for k in _ALWAYS_KEPT_KEYWORDS)
_TAG_TEXT = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")


def parse_attribute(name: str | int) -> int:
    """The tag of an attribute named in configuration.

    Parameters
    ----------
    name
        A keyword of PS3.6 (``"PatientBirthDate"``), a tag as ``"(0010,0030)"``, ``"0010,0030"``
        or ``"00100030"``, or an int.

    Raises
    ------
    ValueError
        For an unknown keyword or a malformed tag; the message names it and suggests near
        keywords.
    """
    if isinstance(name, int):
        if not 0 <= name <= 0xFFFFFFFF:
            raise ValueError(f"attribute tag {name:#x} is not a 32-bit tag")
        return name
    text = name.strip()
    match = _TAG_TEXT.fullmatch(text)
    if match is not None:
        return int(match[1] + match[2], 16)
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    tag = keyword_dict.get(text)
    if tag is None:
        near = difflib.get_close_matches(text, list(keyword_dict), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(
            f"unknown DICOM attribute {name!r}: expected a PS3.6 keyword such as 'PatientBirthDate' "
            f"or a tag such as '(0010,0030)'{hint}"
        )
    return int(tag)


class AttributeFilter:
    """Which attributes a role may see: an allow-list, a deny-list, or both.

    UIDs and the attributes that display an image (:data:`_ALWAYS_KEPT_KEYWORDS`) are always
    kept, so a filtered instance still opens in a viewer and still joins its study. ``deny``
    removes an attribute wherever it occurs, inside sequences too; ``allow`` limits the top level
    of the data set (an allowed sequence keeps its items, less what ``deny`` removes).

    Parameters
    ----------
    allow
        If given, only these attributes (and the always-kept ones) are shown. Keywords, tags as
        ``"(gggg,eeee)"`` strings, or ints (:func:`parse_attribute`).
    deny
        Attributes never shown, in the same forms.

    Raises
    ------
    ValueError
        For an unknown keyword, or a denied attribute that is always kept.
    """

    def __init__(self, *, allow: Iterable[str | int] | None = None, deny: Iterable[str | int] = ()) -> None:
        denied = frozenset(parse_attribute(name) for name in deny)
        always = sorted(t for t in denied if t in _ALWAYS_KEPT or _dictionary_vr(t) == "UI")
        if always:
            names = ", ".join(keyword_for_tag(t) or f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in always)
            raise ValueError(
                f"cannot deny {names}: UIDs and the attributes that display the image are always kept"
            )
        self._deny = denied
        self._allow = None if allow is None else frozenset(parse_attribute(name) for name in allow)

    @property
    def allow(self) -> frozenset[int] | None:
        """Tags allowed at the top level, or ``None`` for all."""
        return self._allow

    @property
    def deny(self) -> frozenset[int]:
        """Tags removed everywhere."""
        return self._deny

    def permits(self, tag: int, vr: str, *, top_level: bool = True) -> bool:
        """Whether an element of ``tag`` and ``vr`` is shown."""
        if tag & 0xFFFF == 0:
            return False  # group lengths go stale once anything is removed
        if tag in _ALWAYS_KEPT or vr == "UI":
            return True
        if tag in self._deny:
            return False
        return not (top_level and self._allow is not None) or tag in self._allow

    def apply_json(self, ds: Mapping[str, Any]) -> JsonDict:
        """A new DICOM JSON object holding what the role may see of ``ds`` (left unchanged)."""
        return self._json_level(ds, top_level=True)

    def _json_level(self, ds: Mapping[str, Any], *, top_level: bool) -> JsonDict:
        out: JsonDict = {}
        for key, element in ds.items():
            tag = int(key, 16)
            vr = str(element.get("vr") or _dictionary_vr(tag))
            if not self.permits(tag, vr, top_level=top_level):
                continue
            if vr == "SQ":
                items = [self._json_level(item, top_level=False) for item in element.get("Value") or []]
                out[key] = {"vr": vr, "Value": items} if items else {"vr": vr}
            else:
                out[key] = _json_copy(element)
        return out

    def apply_dataset(self, ds: Dataset) -> Dataset:
        """A new data set holding what the role may see of ``ds`` (left unchanged).

        The File Meta Information is kept as it is: it holds UIDs and the transfer syntax only.
        """
        out = copy.deepcopy(ds)
        self._dataset_level(out, top_level=True)
        return out

    def _dataset_level(self, ds: Dataset, *, top_level: bool) -> None:
        for tag in list(ds._dict):
            vr = _dataset_vr(ds, tag)
            if not self.permits(int(tag), vr, top_level=top_level):
                del ds[tag]
            elif vr == "SQ" and self._deny:
                for item in ds[tag].value or []:
                    self._dataset_level(item, top_level=False)
