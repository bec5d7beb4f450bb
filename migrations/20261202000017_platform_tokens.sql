-- Platform tokens: bound to no tenant, they see queue health and aggregate
-- counts across tenants (the monitor's queues page), never a run's
-- contents; every other token keeps exactly one tenant.
ALTER TABLE api_tokens
    DROP CONSTRAINT api_tokens_role_check,
    ADD CONSTRAINT api_tokens_role_check CHECK (role IN ('readonly', 'operator', 'platform')),
    ALTER COLUMN tenant_id DROP NOT NULL,
    ADD CONSTRAINT api_tokens_platform_has_no_tenant CHECK ((role = 'platform') = (tenant_id IS NULL));
