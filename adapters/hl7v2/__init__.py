"""HL7 v2 over MLLP: the listener (inbound orders, ADT, SIU, lab results) and the outbound sender
(status and release results to the hospitals). See the modules' docstrings and mappings/README.md.

* ``framer`` — MLLP framing with a size cap;
* ``tokenizer`` — the hot-path parser (bytes → segments/fields, encodings, escapes, batches);
* ``ack`` — original and enhanced acknowledgments, ERR segments;
* ``mapping`` — the mapping engine over ``mappings/hl7v2/*.yaml`` and partner overrides;
* ``interpret`` — mapped messages → core commands;
* ``routing`` — source address and MSH-4 → partner;
* ``listener`` — the asyncio MLLP server (inbox, group commit, ACK after COMMIT);
* ``build``, ``client``, ``outbound`` — outbound messages, the persistent MLLP client, the sender;
* ``ops`` — operator tools behind ``cgt-hub messages``.
"""
