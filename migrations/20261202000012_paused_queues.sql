-- Paused queues: workers stop reading a paused queue within a second or
-- two (they poll this table), let in-flight jobs finish, and read on when
-- it is resumed. Entries wait in the stream meanwhile: nothing is lost, and
-- the reaper leaves runs whose entry waits alone.

CREATE TABLE queue_pauses (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    -- Who paused it (a name, with the user id when there is one).
    paused_by text NOT NULL,
    reason    text NULL
);

-- A queue serves every tenant: pausing it from the command line is an
-- action of no tenant's.
ALTER TABLE operator_actions ALTER COLUMN tenant_id DROP NOT NULL;

-- Pause (`p_pause`) or resume queue `p_queue` for `p_actor_name`,
-- recording the action (in tenant `p_tenant`'s trail, or in none); returns
-- `paused`, `already_paused`, `resumed` or `not_paused`. SECURITY DEFINER:
-- the roles that pause (producer, monitor) need no rights on the tables.
CREATE FUNCTION opsrun_pause_queue(p_queue text, p_pause boolean, p_tenant bigint,
                                   p_actor_user_id bigint, p_actor_name text, p_reason text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    did text;
    who text := p_actor_name || CASE WHEN p_actor_user_id IS NULL THEN '' ELSE format(' (user %s)', p_actor_user_id) END;
BEGIN
    IF p_pause THEN
        INSERT INTO public.queue_pauses (queue, paused_by, reason) VALUES (p_queue, who, p_reason)
        ON CONFLICT (queue) DO NOTHING;
        did := CASE WHEN FOUND THEN 'paused' ELSE 'already_paused' END;
    ELSE
        DELETE FROM public.queue_pauses WHERE queue = p_queue;
        did := CASE WHEN FOUND THEN 'resumed' ELSE 'not_paused' END;
    END IF;
    INSERT INTO public.operator_actions (tenant_id, action, queue, actor_user_id, actor_name, reason, result)
    VALUES (p_tenant, CASE WHEN p_pause THEN 'pause' ELSE 'resume' END, p_queue,
            p_actor_user_id, p_actor_name, p_reason, did);
    RETURN did;
END
$$;
REVOKE ALL ON FUNCTION opsrun_pause_queue(text, boolean, bigint, bigint, text, text) FROM PUBLIC;
