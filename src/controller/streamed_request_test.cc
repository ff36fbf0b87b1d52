// StreamedRequest with fake connections: parts reach every engine's stream, the window is
// released only when the slowest engine has written a part, an engine that goes away stops
// holding the window, abandoning is said once, and no engine is started after a part passed.
#include "controller/streamed_request.h"

#include <gtest/gtest.h>

#include "net/fake_connection.h"

namespace testudo::controller {
namespace {

using testing::FakeConnection;

wire::Message first_part() {
  wire::Message m;
  m.envelope.kind = wire::MessageKind::kPush;
  m.segments.push_back(SharedBytes::copy_of(std::string_view("names")));
  return m;
}

TEST(StreamedRequestTest, TheSlowestEngineSetsThePace) {
  StreamedRequest relay({5, 300}, 100, nullptr);
  FakeConnection e0, e1;
  ASSERT_TRUE(relay.forward_to(e0, first_part(), 10, 0));
  ASSERT_TRUE(relay.forward_to(e1, first_part(), 11, 1));
  relay.chunk(1, SharedBytes::copy_of(std::string(120, 'a')));
  EXPECT_EQ(relay.in_flight(), 120u) << "one copy of the bytes, however many engines";
  EXPECT_TRUE(relay.backlogged());
  int woken = 0;
  relay.when_room([&] { ++woken; });
  e0.streams[0].second->parts().clear();  // engine 0 wrote it
  EXPECT_EQ(woken, 0);
  EXPECT_EQ(relay.in_flight(), 120u);
  e1.streams[0].second->parts().clear();
  EXPECT_EQ(woken, 1);
  EXPECT_EQ(relay.in_flight(), 0u);
  // Once started, no engine may join: it would miss what passed.
  FakeConnection late;
  EXPECT_FALSE(relay.forward_to(late, first_part(), 12, 2));
  EXPECT_TRUE(late.sent.empty());
  relay.chunk(1, SharedBytes::copy_of(std::string(180, 'b')));
  relay.end();
  EXPECT_EQ(e0.streams[0].second->state(), net::OutgoingStream::State::kFinished);
  EXPECT_EQ(e1.streams[0].second->parts().size(), 1u);
}

TEST(StreamedRequestTest, AnEngineThatGoesAwayStopsHoldingTheWindow) {
  StreamedRequest relay({0, 1000}, 100, nullptr);
  FakeConnection e0, e1;
  ASSERT_TRUE(relay.forward_to(e0, first_part(), 10, 0));
  ASSERT_TRUE(relay.forward_to(e1, first_part(), 11, 1));
  relay.chunk(1, SharedBytes::copy_of(std::string(150, 'a')));
  e0.streams[0].second->parts().clear();
  EXPECT_TRUE(relay.backlogged());
  e1.drop();  // its queue goes, and what is pushed for it from now on is dropped
  EXPECT_FALSE(relay.backlogged());
  relay.chunk(1, SharedBytes::copy_of(std::string(150, 'b')));
  EXPECT_TRUE(e1.streams[0].second->parts().empty());
  EXPECT_EQ(relay.in_flight(), 150u) << "held for engine 0 only";
}

TEST(StreamedRequestTest, AbandoningTellsEveryEngineAndTheOwnerOnce) {
  std::vector<StreamedRequest::Tasks> told;
  StreamedRequest relay({5, 300}, 100, [&](const Status& why, const StreamedRequest::Tasks& tasks) {
    EXPECT_EQ(why.code(), StatusCode::kUnavailable);
    told.push_back(tasks);
  });
  FakeConnection e0, e1;
  ASSERT_TRUE(relay.forward_to(e0, first_part(), 10, 0));
  ASSERT_TRUE(relay.forward_to(e1, first_part(), 11, 1));
  relay.chunk(1, SharedBytes::copy_of(std::string(10, 'a')));
  relay.abandon(unavailable("client went away"));
  relay.abandon(unavailable("again"));
  ASSERT_EQ(told.size(), 1u);
  EXPECT_EQ(told[0], (StreamedRequest::Tasks{{10, 0}, {11, 1}}));
  EXPECT_EQ(e0.streams[0].second->state(), net::OutgoingStream::State::kAbandoned);
  EXPECT_EQ(e1.streams[0].second->state(), net::OutgoingStream::State::kAbandoned);
}

}  // namespace
}  // namespace testudo::controller
