// The outbound address policy, alone: every spelling of an address is judged as the address it is.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { classifyAddress, DEFAULT_OUTBOUND_POLICY, outboundRefusal, parseAddress } from "../actors/outboundPolicy.ts";

describe("outbound address policy", () => {
  it("reads every spelling of the metadata address as 169.254.169.254", () => {
    const spellings = [
      "169.254.169.254",
      "2852039166", // integer
      "0xa9fea9fe", // hex integer
      "0xa9.0xfe.0xa9.0xfe", // hex parts
      "0251.0376.0251.0376", // octal parts
      "169.254.43518", // a.b.c
      "169.16689662", // a.b
      "169.254.169.254.", // trailing dot
      "169.254.169.254..",
      "::ffff:169.254.169.254", // IPv4-mapped
      "[::ffff:a9fe:a9fe]", // as a URL host
      "0:0:0:0:0:ffff:a9fe:a9fe",
      "::ffff:0:a9fe:a9fe", // IPv4-translated
      "::a9fe:a9fe", // IPv4-compatible
      "64:ff9b::a9fe:a9fe", // NAT64
      "64:ff9b:1::a9fe:a9fe", // local-use NAT64
      "2002:a9fe:a9fe::1", // 6to4
    ];
    for (const s of spellings) {
      assert.equal(classifyAddress(s), "link-local", s);
      assert.equal(outboundRefusal(s, DEFAULT_OUTBOUND_POLICY), `address ${s} is not allowed (link-local)`, s);
    }
  });

  it("always denies link-local, metadata and unroutable addresses", () => {
    const cases: Array<[string, string]> = [
      ["169.254.0.1", "link-local"],
      ["fe80::1", "link-local"],
      ["[fe80::1%eth0]", "link-local"],
      ["febf:ffff::1", "link-local"],
      ["100.100.100.200", "metadata"],
      ["fd00:ec2::254", "metadata"],
      ["[fd00:ec2:0::254]", "metadata"],
      ["::ffff:100.100.100.200", "metadata"],
      ["0.0.0.0", "unspecified"],
      ["0", "unspecified"],
      ["0.1.2.3", "unspecified"],
      ["::", "unspecified"],
      ["::ffff:0.0.0.0", "unspecified"],
      ["255.255.255.255", "broadcast"],
      ["224.0.0.1", "multicast"],
      ["ff02::1", "multicast"],
    ];
    for (const [address, cls] of cases) {
      assert.equal(classifyAddress(address), cls, address);
      assert.match(outboundRefusal(address, DEFAULT_OUTBOUND_POLICY) ?? "", /is not allowed/, address);
    }
  });

  it("classifies loopback, private and public addresses in any spelling", () => {
    const cases: Array<[string, string]> = [
      ["127.0.0.1", "loopback"],
      ["127.1", "loopback"],
      ["0x7f000001", "loopback"],
      ["017700000001", "loopback"],
      ["::1", "loopback"],
      ["[::1]", "loopback"],
      ["::ffff:127.0.0.1", "loopback"],
      ["10.1.2.3", "private"],
      ["172.16.0.1", "private"],
      ["172.31.255.255", "private"],
      ["192.168.1.1", "private"],
      ["100.64.0.1", "private"],
      ["fc00::1", "private"],
      ["fd12:3456::1", "private"],
      ["::ffff:10.0.0.1", "private"],
      ["8.8.8.8", "public"],
      ["172.32.0.1", "public"],
      ["2606:4700::1111", "public"],
      ["64:ff9b::808:808", "public"],
    ];
    for (const [address, cls] of cases) assert.equal(classifyAddress(address), cls, address);
  });

  it("allows loopback and private by default and denies them when configured", () => {
    for (const a of ["127.0.0.1", "::1", "10.0.0.1", "fc00::1", "8.8.8.8"]) assert.equal(outboundRefusal(a, DEFAULT_OUTBOUND_POLICY), null, a);
    const strict = { deny: ["loopback", "private"] as const };
    assert.equal(outboundRefusal("127.0.0.1", strict), "address 127.0.0.1 is not allowed (loopback)");
    assert.equal(outboundRefusal("::ffff:7f00:1", strict), "address ::ffff:7f00:1 is not allowed (loopback)");
    assert.equal(outboundRefusal("192.168.0.1", strict), "address 192.168.0.1 is not allowed (private)");
    assert.equal(outboundRefusal("8.8.8.8", strict), null);
    assert.equal(outboundRefusal("10.0.0.1", { deny: ["loopback"] }), null);
  });

  it("leaves names to be judged by what they resolve to", () => {
    for (const name of ["localhost", "metadata.google.internal", "169.254.169.254.nip.io", "1.1.1.1.example", "a.b"]) {
      assert.equal(parseAddress(name), null, name);
      assert.equal(outboundRefusal(name, { deny: ["loopback", "private"] }), null, name);
    }
  });
});
