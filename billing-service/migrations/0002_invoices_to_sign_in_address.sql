-- Invoice emails now go to the caller's own sign-in address, asked of auth-service when
-- they are sent (msp_billing/accounts.py). The billing email given with the first card only
-- lives on the Stripe customer (for Stripe's own receipts): billing's sealed copy has no
-- reader left, so it is cleared. The column stays until no older replica writes it.
UPDATE payers SET email_sealed = NULL;
COMMENT ON COLUMN payers.email_sealed IS 'Unused since 0002 (was: the billing email, sealed); to be dropped.';

-- A user's own invoices, whoever paid them (emailing them, listing them).
CREATE INDEX invoices_user ON invoices (user_id, created_at DESC);
