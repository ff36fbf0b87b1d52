// Writes the seed corpus of every fuzz target with the real encoders, so the seeds follow
// the format when it changes:  make_seeds <out dir>  ->  <out dir>/<target>/<seed name>.
// Run by the build (fuzz/CMakeLists.txt); the connection-file seeds are committed JSON.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "auth/capability.h"
#include "auth/scram_login.h"
#include "e2e/engine_seal.h"
#include "e2e/pair_offer.h"
#include "e2e/result_key.h"
#include "e2e/sealed_body.h"
#include "net/data_link.h"
#include "scram_fuzz.h"
#include "wire/body.h"
#include "wire/control.h"
#include "wire/message.h"
#include "wire/reply.h"

using namespace testudo;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& dir, const std::string& name, std::span<const std::byte> bytes) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_seeds: cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

void write(const fs::path& dir, const std::string& name, std::string_view text) {
  write(dir, name, std::as_bytes(std::span(text.data(), text.size())));
}

// body_fuzz: selector byte, then the segment.
void write_body(const fs::path& dir, const std::string& name, std::uint8_t selector, const SharedBytes& segment) {
  std::vector<std::byte> in{std::byte{selector}};
  in.insert(in.end(), segment.span().begin(), segment.span().end());
  write(dir, name, in);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds <out dir>\n");
    return 2;
  }
  const fs::path out = argv[1];

  // frame_header_fuzz
  const fs::path frames = out / "frame_header_fuzz";
  write(frames, "head_small", wire::encode_frame_header({wire::FrameType::kHead, 60}));
  write(frames, "head_preauth_max", wire::encode_frame_header({wire::FrameType::kHead, 4096}));
  write(frames, "data_1mib", wire::encode_frame_header({wire::FrameType::kData, 1u << 20}));
  write(frames, "data_too_big", wire::encode_frame_header({wire::FrameType::kData, (1u << 20) + 1}));

  // frame_stream_fuzz: frames as a connection reads them, an overtaking heartbeat and
  // queue-status request inside a push.
  {
    auto frame = [](wire::FrameType type, std::span<const std::byte> payload, bool overtaking) {
      auto header = wire::encode_frame_header({type, static_cast<std::uint32_t>(payload.size()), overtaking});
      std::vector<std::byte> out(header.begin(), header.end());
      out.insert(out.end(), payload.begin(), payload.end());
      return out;
    };
    auto text = [](std::string_view t) { return std::as_bytes(std::span(t.data(), t.size())); };
    wire::Envelope push;
    push.kind = wire::MessageKind::kPush;
    push.request_id = 3;
    push.targets = {0, 1};
    wire::Envelope beat;
    beat.kind = wire::MessageKind::kHeartbeat;
    wire::Envelope status;
    status.kind = wire::MessageKind::kQueueStatus;
    const std::vector<SharedBytes> body{SharedBytes::copy_of(std::string_view("pickled")), SharedBytes(),
                                        SharedBytes::copy_of(std::string_view("buffer"))};
    const std::vector<SharedBytes> one{SharedBytes::copy_of(std::string_view("q"))};
    std::vector<std::byte> stream;
    auto add = [&stream](const std::vector<std::byte>& bytes) { stream.insert(stream.end(), bytes.begin(), bytes.end()); };
    add(frame(wire::FrameType::kHead, wire::encode_head(beat, {}), false));
    add(frame(wire::FrameType::kHead, wire::encode_head(push, body), false));
    add(frame(wire::FrameType::kData, text("pick"), false));
    add(frame(wire::FrameType::kHead, wire::encode_head(beat, {}), true));
    add(frame(wire::FrameType::kHead, wire::encode_head(status, one), true));
    add(frame(wire::FrameType::kData, text("q"), true));
    add(frame(wire::FrameType::kData, text("led"), false));
    add(frame(wire::FrameType::kData, text("buffer"), false));
    write(out / "frame_stream_fuzz", "push_with_overtakers", stream);
  }

  // message_head_fuzz
  const fs::path heads = out / "message_head_fuzz";
  {
    wire::Envelope hello;
    hello.kind = wire::MessageKind::kHello;
    hello.text = auth::encode_hello({wire::Role::kClient, "c-0123456789abcdef", {}});
    write(heads, "hello", wire::encode_head(hello, {}));

    wire::Envelope execute;
    execute.kind = wire::MessageKind::kExecute;
    execute.request_id = 7;
    execute.targets = {0, 2, 4};
    std::vector<SharedBytes> code{SharedBytes::copy_of(std::string_view("c = a + b"))};
    write(heads, "execute", wire::encode_head(execute, code));

    wire::Envelope reply;
    reply.kind = wire::MessageKind::kTaskReply;
    reply.request_id = 7;
    reply.task_id = 99;
    reply.engine_id = 2;
    std::vector<SharedBytes> parts{SharedBytes::allocate(40), SharedBytes::allocate(0), SharedBytes::allocate(12),
                                   SharedBytes::allocate(300)};
    write(heads, "task_reply", wire::encode_head(reply, parts));

    wire::Message failed = wire::task_reply(Outcome::kPythonError, {.request_id = 7, .task_id = 100, .engine_id = 3},
                                            {}, parts);
    write(heads, "task_reply_python_error", wire::encode_head(failed.envelope, failed.segments));
    wire::Message died = wire::task_reply(Outcome::kEngineDied, {.request_id = 8, .task_id = 101, .engine_id = 1},
                                          "engine 1 died or disconnected while running this task");
    write(heads, "task_reply_engine_died", wire::encode_head(died.envelope, {}));

    wire::Envelope key_admin;
    key_admin.kind = wire::MessageKind::kKeyAdmin;
    key_admin.request_id = 9;
    wire::Message refused = wire::control_refusal(wire::MessageKind::kKeyAdminReply, key_admin, 4,
                                                  Outcome::kNotFound, "no identity matches 'ab12'");
    write(heads, "key_admin_not_found", wire::encode_head(refused.envelope, {}));

    wire::Envelope balanced;
    balanced.kind = wire::MessageKind::kExecute;
    balanced.set_display_result(true);
    balanced.set_load_balanced(true);
    balanced.text = wire::encode_task_options({1, 500, {3, 4}, {}});
    write(heads, "execute_balanced", wire::encode_head(balanced, code));

    wire::Envelope pull;
    pull.kind = wire::MessageKind::kPull;
    pull.set_value_format(wire::ValueFormat::kLiteral);
    pull.targets = {1};
    write(heads, "pull_literal", wire::encode_head(pull, code));

    wire::Envelope output;
    output.kind = wire::MessageKind::kTaskOutput;
    output.set_output_stream(wire::OutputStream::kStderr);
    output.task_id = 99;
    write(heads, "task_output", wire::encode_head(output, code));

    wire::Message rejected = wire::rejection(Outcome::kNotAllowed, "capability proof does not match");
    write(heads, "rejected", wire::encode_head(rejected.envelope, {}));
  }

  // body_fuzz: 0 names, 1 literal pairs, 2 reply meta.
  const fs::path bodies = out / "body_fuzz";
  write_body(bodies, "names", 0, wire::encode_names({"a", "b", "result_1"}));
  write_body(bodies, "names_empty", 0, wire::encode_names({}));
  write_body(bodies, "literals", 1, wire::encode_literal_pairs({{"a", "1"}, {"b", "[1, 2.5, 'x']"}, {"d", "{}"}}));
  write_body(bodies, "reply_ok", 2, wire::encode_reply_meta({true, "", "", "", 1700000000000000, 1700000000000123}));
  write_body(bodies, "reply_error", 2,
             wire::encode_reply_meta({false, "ZeroDivisionError", "division by zero",
                                      "Traceback (most recent call last):\n  File \"<cell>\", line 1\n", 1, 2}));

  // hello_fuzz
  const fs::path hellos = out / "hello_fuzz";
  auth::Hello client{wire::Role::kClient, "c-0123456789abcdef", {}};
  for (std::size_t i = 0; i < client.proof.size(); ++i) client.proof[i] = std::byte(i * 7);
  write(hellos, "client", auth::encode_hello(client));
  write(hellos, "engine_no_instance", auth::encode_hello({wire::Role::kEngine, "", {}}));
  write(hellos, "engine_max_instance", auth::encode_hello({wire::Role::kEngine, std::string(auth::kMaxInstanceBytes, 'e'), {}}));

  // control_fuzz: selector byte (mod 3: 0 task options, 1 id list, 2 welcome terms), then the payload.
  const fs::path controls = out / "control_fuzz";
  write(controls, "options", std::string(1, '\0') + wire::encode_task_options({2, 500, {1, 2}, {3}}));
  write(controls, "options_empty", std::string(1, '\0') + wire::encode_task_options({}));
  write(controls, "ids", std::string(1, '\1') + wire::encode_ids({7, 8, 9}).to_string());
  write(controls, "welcome_terms", std::string(1, '\2') + wire::encode_welcome_terms({.max_message_bytes = 1u << 30}));

  // scram_server_fuzz: a selector byte (even: to the controller, odd: to the client), then
  // messages separated by '\n', recorded from a real login between the two halves.
  const fs::path scram = out / "scram_server_fuzz";
  {
    auto client = auth::make_scram_login_client(std::string(fuzz::kScramUser), [] {
      return StatusOr<std::string>(std::string(fuzz::kScramPassword));
    });
    auto server = auth::make_scram_login_server(fuzz::scram_users(), fuzz::scram_binding());
    auto client_first = client.ok() ? (*client)->start(fuzz::scram_binding()) : StatusOr<std::string>(client.status());
    auto server_first = server.ok() && client_first.ok() ? (*server)->step(*client_first)
                                                         : StatusOr<auth::LoginServer::Step>(internal_error("no server"));
    auto client_final = server_first.ok() ? (*client)->step(server_first->reply)
                                          : StatusOr<std::optional<std::string>>(internal_error("no exchange"));
    auto server_final = client_final.ok() && client_final->has_value()
                            ? (*server)->step(**client_final)
                            : StatusOr<auth::LoginServer::Step>(internal_error("no exchange"));
    if (!server_final.ok()) {
      std::fprintf(stderr, "make_seeds: the SCRAM exchange failed: %s\n", server_final.status().to_string().c_str());
      return 1;
    }
    write(scram, "to_server_login", std::string(1, '\0') + *client_first + "\n" + **client_final);
    write(scram, "to_server_first_only", std::string(1, '\0') + *client_first);
    write(scram, "to_server_no_binding", std::string(1, '\0') + "n,,n=alice,r=abcdefghijklmnop");
    write(scram, "to_server_unknown_user", std::string(1, '\0') + "p=tls-exporter,,n=mallory,r=abcdefghijklmnop");
    write(scram, "to_client_login", std::string(1, '\1') + server_first->reply + "\n" + server_final->reply);
    write(scram, "to_client_bad_signature", std::string(1, '\1') + server_first->reply + "\nv=AAAA");
  }
  // sealed_fuzz: selector byte, then the input (fresh keys: structure, not authenticity).
  {
    const fs::path sealed = out / "sealed_fuzz";
    auto with = [](std::uint8_t selector, std::span<const std::byte> rest) {
      std::vector<std::byte> in{std::byte{selector}};
      in.insert(in.end(), rest.begin(), rest.end());
      return in;
    };
    auto as_bytes = [](std::string_view t) { return std::as_bytes(std::span(t.data(), t.size())); };
    auto engine = tls::generate_self_signed("seed engine").value();
    auto client = tls::generate_self_signed("seed client").value();
    auto seal = crypto::generate_x25519().value();
    e2e::PairKey key;
    key.id.fill(std::byte{7});
    key.key.fill(std::byte{9});
    const e2e::VerifiedEngine verified{tls::key_fingerprint_of_pem(engine.cert_pem).value(), seal.public_key};
    const std::string offer = e2e::make_pair_offer(client, verified, key, key, seal.public_key).value();
    e2e::SealHeader header;
    header.seq = 3;
    write(sealed, "header", with(0, e2e::encode_seal_header(header).span()));
    header.offer = offer;
    write(sealed, "header_with_offer", with(0, e2e::encode_seal_header(header).span()));
    write(sealed, "offer", with(1, as_bytes(offer)));
    write(sealed, "statement", with(2, as_bytes(e2e::make_engine_seal_statement(engine, seal.public_key).value())));
    const SharedBytes body[] = {SharedBytes::copy_of(std::string_view("x = 1"))};
    header.offer.clear();
    auto part = e2e::seal_body(key, header, {}, body).value();
    std::vector<std::byte> opened{std::byte{1}};
    opened.insert(opened.end(), part[0].span().begin(), part[0].span().end());
    opened.insert(opened.end(), part[1].span().begin(), part[1].span().end());
    write(sealed, "body", with(3, opened));
    const auto grant = e2e::grant_result_key(engine, "sha256:fuzz", seal.public_key, key.id).value();
    write(sealed, "result_key", with(4, as_bytes(grant.grant)));
  }
  // data_link_fuzz: selector byte (0 hello, 1 transfer sizes), then the input.
  {
    const fs::path link = out / "data_link_fuzz";
    net::DataHello hello{net::DataRole::kReceiver, {}};
    hello.ticket.fill(std::byte{0x5a});
    std::vector<std::byte> in{std::byte{0}};
    const auto encoded = net::encode_data_hello(hello);
    in.insert(in.end(), encoded.begin(), encoded.end());
    write(link, "hello", in);
    const std::uint64_t sizes[] = {1u << 20, 17, 0};
    const SharedBytes table = net::encode_transfer_sizes(sizes);
    std::vector<std::byte> sized{std::byte{1}};
    sized.insert(sized.end(), table.span().begin(), table.span().end());
    write(link, "sizes", sized);
  }

  return 0;
}
