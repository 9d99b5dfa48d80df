# vipmilter example policy. The binding is the value of the variable
# "binding" when the script ends; leave it unset to fall through to
# Match_Domain and then to the "default" binding.
require ["envelope", "variables", "environment"];

# Authenticated marketing submissions leave from the newsletter address.
if envelope :is "auth" "marketing" {
  set "binding" "Newsletters";
  stop;
}

# Mailing-list traffic too, whoever sends it.
if exists "List-Id" {
  set "binding" "Newsletters";
  stop;
}

# Bulk senders share the pool; the group picks a member per recipient domain.
if envelope :domain :is "from" "bulk.example.org" {
  set "binding" "Pool";
}

# A campaign split between two bindings: a comma list picks one entry at
# random for each message.
if header :is "X-Campaign" "split" {
  set "binding" "Newsletters,Example";
  stop;
}
