-- phoneNumber of getPhoneNumber (with the country code for foreign numbers), beside
-- purePhoneNumber (phone) and countryCode (phone_country_code).
ALTER TABLE users ADD COLUMN phone_number TEXT NOT NULL DEFAULT '';
