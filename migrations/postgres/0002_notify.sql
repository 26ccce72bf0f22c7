-- Every write bumps meridian_revision inside its transaction; this tells every replica's
-- listener the new revision when (and only if) the transaction commits.
CREATE FUNCTION meridian_notify_revision() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('meridian_revision', NEW.value::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER meridian_revision_notify
    AFTER UPDATE ON meridian_revision
    FOR EACH ROW EXECUTE FUNCTION meridian_notify_revision();
