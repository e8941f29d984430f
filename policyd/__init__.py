"""backupmx.policyd: the Postfix policy service (``check_policy_service``) of backupmx."""
