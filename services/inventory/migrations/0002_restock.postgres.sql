-- A committed order's units can go back to available: reservations gain RESTOCKED.
ALTER TABLE reservations DROP CONSTRAINT reservations_status;
ALTER TABLE reservations ADD CONSTRAINT reservations_status
    CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'COMMITTED', 'RESTOCKED'));
