-- Whether the user's current password is long enough to be the only factor: set with every
-- new password (store.set_password), from policy.single_factor_ok (the length every password
-- profile asks for without 2-step verification, 15 under nist_rev4). NIST SP 800-63B Rev. 4
-- allows 8 characters only while 2-step applies, so under nist_rev4 2-step may be turned off
-- only when this is true. NULL: unknown (passwords set before this column, or by a caller
-- that did not say), which nist_rev4 treats as false.
ALTER TABLE users ADD COLUMN password_single_factor_ok boolean;
