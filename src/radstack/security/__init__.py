"""Security: the tamper-evident audit trail (and, later, authentication, authorisation, encryption)."""

from radstack.security.audit import (
    AuditActionValues,
    AuditLog,
    AuditOutcomeValues,
    AuditRecord,
    VerifyReport,
    load_audit_key,
    verify,
)

__all__ = [
    "AuditActionValues",
    "AuditLog",
    "AuditOutcomeValues",
    "AuditRecord",
    "VerifyReport",
    "load_audit_key",
    "verify",
]
